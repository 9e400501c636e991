"""ams snapshot: point-in-time snapshots of a directory, and restores from them."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from ams.cli._common import HomeOption, JsonOption, actor, console, emit_json, note, print_table, when
from ams.cli.directory_cmd import DirectoryIdArgument, note_restore, opened_directories
from ams.errors import Conflict

app = typer.Typer(
    help="Directory snapshots: take, list, verify, restore, delete, limits.", no_args_is_help=True
)

SnapshotIdArgument = Annotated[str, typer.Argument(help="The snapshot id (s-...).")]


@app.command("create")
def create(
    directory_id: DirectoryIdArgument,
    name: Annotated[str | None, typer.Option("--name", help="A name for the snapshot.")] = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Take a manual snapshot (at most 5 per directory)."""
    from ams.directory import snapshots

    with opened_directories(home) as instance:
        info = snapshots.create(instance, directory_id, name=name, actor=actor())
    if json_out:
        emit_json(info.to_dict())
        return
    console.print(
        f"Snapshot {info.id} of {info.directory_id} {info.status}: {info.entries} entries, "
        f"{info.size} bytes, sha256 {info.sha256}."
    )


@app.command("list")
def list_(
    directory_id: Annotated[str | None, typer.Argument(help="Only this directory's snapshots.")] = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """List snapshots, newest first, with each file's checksum state (a file whose size or time
    changed is read whole again; the service checks every file daily)."""
    from ams.directory import snapshots

    with opened_directories(home) as instance:
        infos = snapshots.list_snapshots(instance, directory_id)
    if json_out:
        emit_json([s.to_dict() for s in infos])
        return
    rows: list[list[str]] = []
    for s in infos:
        checksum = {True: "ok", False: "FAILED", None: "-"}[s.checksum_ok]
        rows.append(
            [
                s.id,
                s.directory_id,
                s.type,
                s.name or "-",
                s.status,
                when(s.start_time),
                "-" if s.entries is None else str(s.entries),
                checksum,
            ]
        )
    print_table(
        ["id", "directory", "type", "name", "status", "started", "entries", "checksum"],
        rows,
        ids=("id", "directory"),
    )
    if any(s.checksum_ok is False for s in infos):
        note("warning: a snapshot file fails its checksum: it cannot be restored; delete it")


@app.command("restore")
def restore_(
    snapshot_id: SnapshotIdArgument,
    wait: Annotated[
        bool, typer.Option("--wait", help="Show progress until the directory is Active.")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Restore a snapshot into its directory. Entries made after the snapshot are lost.

    With `ams serve` running, the service does the work: the command returns at once
    (--wait polls until it ends). Without a service, this command does it before it exits.
    """
    from ams.directory import directories, restore, snapshots

    with opened_directories(home) as instance:
        started = snapshots.restore(instance, snapshot_id, actor=actor())
        directory_id = started.id
        if instance.service_pid() is not None:
            if not wait:
                console.print(
                    f"Restoring {snapshot_id} into {directory_id}: `ams serve` does it now. "
                    f"Follow it with `ams directory show {directory_id}`."
                )
                return
            console.print(f"Restoring {snapshot_id} into {directory_id} (done by `ams serve`)...")
            while True:
                info = directories.get(instance, directory_id)
                if info.stage != "Restoring":
                    break
                time.sleep(0.5)
        else:
            if not wait:
                console.print(
                    f"Restoring {snapshot_id} into {directory_id} (no `ams serve` runs, so this "
                    "command does it before it exits)..."
                )

            def progress(_directory: str, loaded: int) -> None:
                if wait:
                    console.print(f"  {loaded} entries loaded")

            for result in restore.run_pending(instance, progress=progress):
                if result.directory_id != directory_id and result.state == "failed":
                    note_restore(result)
            info = directories.get(instance, directory_id)
    if info.stage == "RestoreFailed":
        raise Conflict(f"the restore of {snapshot_id} into {directory_id} failed: {info.stage_reason}")
    console.print(
        f"Directory {directory_id} is {info.stage} with the {info.entry_count} entries of {snapshot_id}."
    )


@app.command("delete")
def delete(snapshot_id: SnapshotIdArgument, home: HomeOption = None) -> None:
    """Delete a snapshot and its file."""
    from ams.directory import snapshots

    with opened_directories(home) as instance:
        info = snapshots.delete(instance, snapshot_id, actor=actor())
    console.print(f"Deleted snapshot {info.id} of {info.directory_id}.")


@app.command("verify")
def verify(snapshot_id: SnapshotIdArgument, home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Read the snapshot's whole file now and check it against its recorded SHA-256."""
    from ams.directory import snapshots

    with opened_directories(home) as instance:
        info = snapshots.verify(instance, snapshot_id)
    if json_out:
        emit_json(info.to_dict())
        return
    console.print(f"Snapshot {info.id} of {info.directory_id}: its file matches sha256 {info.sha256}.")


@app.command("limits")
def limits(
    directory_id: DirectoryIdArgument,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """How many manual snapshots the directory has, of its limit (or that it takes none)."""
    from ams.directory import snapshots

    with opened_directories(home) as instance:
        info = snapshots.limits(instance, directory_id)
    if json_out:
        emit_json(info.to_dict())
        return
    if not info.snapshots_supported:
        console.print(f"Snapshots do not apply: {info.unsupported_reason}.")
        return
    state = "limit reached: delete one to take another" if info.manual_limit_reached else "room for more"
    console.print(f"{directory_id}: {info.manual_count} of {info.manual_limit} manual snapshots ({state}).")
