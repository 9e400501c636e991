"""ams directory: directories (forests) and their entries, LDIF import and export."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ams.cli._common import (
    HomeOption,
    JsonOption,
    PasswordStdinOption,
    actor,
    console,
    emit_json,
    note,
    opened,
    print_table,
    read_secret,
    when,
)
from ams.errors import NotWritable
from ams.home import atomic_write

if TYPE_CHECKING:
    from ams.directory.directories import DirectoryInfo
    from ams.directory.restore import RestoreResult
    from ams.instance import Instance

app = typer.Typer(help="Directories (forests), their entries, LDIF import and export.", no_args_is_help=True)

DirectoryIdArgument = Annotated[str, typer.Argument(help="The directory id (d-...).")]


def note_restore(result: RestoreResult) -> None:
    """Say how a restore that this command ran on the side (not the one asked for) ended."""
    what = "finished" if result.state == "done" else f"failed ({result.reason})"
    note(f"note: a waiting restore of {result.snapshot_id} into {result.directory_id} {what}")


@contextlib.contextmanager
def opened_directories(home: Path | None) -> Iterator[Instance]:
    """Open the instance; when no ``ams serve`` runs, first finish any restore a crash (or
    an earlier command) left in the journal, so the stages shown are settled ones."""
    from ams.directory import restore, snapshots

    with opened(home) as instance:
        if instance.service_pid() is None and restore.pending_count(instance):
            for result in restore.run_pending(instance):
                note_restore(result)
        for snapshot_id in snapshots.resolve_interrupted(instance, actor()):
            note(f"note: snapshot {snapshot_id} was interrupted while it was taken: it is now Failed")
        yield instance


def _print_directory(info: DirectoryInfo) -> None:
    console.print(f"Directory {info.id}  {info.dns_name} ({info.short_name})")
    console.print(f"  type       {info.type} {info.edition}")
    console.print(f"  stage      {info.stage}" + (f" — {info.stage_reason}" if info.stage_reason else ""))
    console.print(f"  since      {when(info.stage_changed_at)}")
    console.print(f"  launched   {when(info.launched_at)}")
    console.print(f"  entries    {info.entry_count}")
    if info.description:
        console.print(f"  about      {info.description}")
    rows: list[list[str]] = []
    for r in info.regions:
        rows.append(
            [
                r.region,
                r.type,
                r.status,
                str(r.data_generation),
                "yes" if r.in_sync else "no",
                when(r.last_updated_at),
            ]
        )
    print_table(
        ["region", "type", "status", "data generation", "in sync", "last updated"], rows, ids=("region",)
    )


@app.command("create")
def create(
    dns_name: Annotated[str, typer.Argument(help="The directory's DNS name, e.g. corp.example.com.")],
    short_name: Annotated[
        str | None, typer.Option("--short-name", help="NetBIOS-style short name (default: first label).")
    ] = None,
    type_: Annotated[str, typer.Option("--type", help="MicrosoftAD or ADConnector.")] = "MicrosoftAD",
    edition: Annotated[str, typer.Option("--edition", help="Standard or Enterprise.")] = "Standard",
    region: Annotated[str, typer.Option("--region", help="The primary region.")] = "us-east-1",
    additional_region: Annotated[
        list[str] | None,
        typer.Option("--additional-region", help="A replica region (Enterprise); repeat for more."),
    ] = None,
    description: Annotated[str | None, typer.Option("--description", help="Free text.")] = None,
    admin_password_stdin: Annotated[
        bool,
        typer.Option(
            "--admin-password-stdin",
            help="Read the admin's LDAP bind password (Admin@DNSNAME) from the first line of standard input.",
        ),
    ] = False,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Create a directory; it is Active at once."""
    from ams.directory import directories

    admin_password = read_secret("admin password", from_stdin=True) if admin_password_stdin else None
    with opened_directories(home) as instance:
        info = directories.create(
            instance,
            dns_name=dns_name,
            short_name=short_name,
            type=type_,
            edition=edition,
            region=region,
            additional_regions=list(additional_region or []),
            description=description,
            admin_password=admin_password,
            actor=actor(),
        )
    if json_out:
        emit_json(info.to_dict())
        return
    console.print(
        f"Created directory {info.id} ({info.dns_name}, {info.type} {info.edition}), stage {info.stage}."
    )


@app.command("list")
def list_(home: HomeOption = None, json_out: JsonOption = False) -> None:
    """List directories."""
    from ams.directory import directories

    with opened_directories(home) as instance:
        infos = directories.list_directories(instance)
    if json_out:
        emit_json([d.to_dict() for d in infos])
        return
    rows: list[list[str]] = []
    for d in infos:
        rows.append(
            [
                d.id,
                d.dns_name,
                d.short_name or "-",
                d.type,
                d.edition,
                d.stage,
                ", ".join(r.region for r in d.regions),
                str(d.entry_count),
            ]
        )
    print_table(
        ["id", "dns name", "short", "type", "edition", "stage", "regions", "entries"], rows, ids=("id",)
    )


@app.command("show")
def show(
    directory_id: DirectoryIdArgument,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Show a directory, its stage and its regions (replicas and whether they are in sync)."""
    from ams.directory import directories

    with opened_directories(home) as instance:
        info = directories.get(instance, directory_id)
    if json_out:
        emit_json(info.to_dict())
        return
    _print_directory(info)


@app.command("admin-password")
def admin_password(
    directory_id: DirectoryIdArgument,
    home: HomeOption = None,
    password_stdin: PasswordStdinOption = False,
) -> None:
    """Set or replace the directory admin's LDAP bind password (Admin@DNSNAME or its DN)."""
    from ams.directory import directories

    password = read_secret("admin password", from_stdin=password_stdin, confirm=True)
    with opened_directories(home) as instance:
        info = directories.set_admin_password(instance, directory_id, password, actor=actor())
    console.print(
        f"The admin password of {info.id} is set: bind as Admin@{info.dns_name} or "
        f"{directories.admin_dn(info.dns_name)}."
    )


@app.command("delete")
def delete(directory_id: DirectoryIdArgument, home: HomeOption = None) -> None:
    """Delete a directory with its entries and snapshots."""
    from ams.directory import directories

    with opened_directories(home) as instance:
        info = directories.delete(instance, directory_id, actor=actor())
    console.print(f"Deleted directory {info.id} ({info.dns_name}) with its entries and snapshots.")


@app.command("import")
def import_(
    directory_id: DirectoryIdArgument,
    file: Annotated[
        Path, typer.Argument(help="An LDIF file (content records, as slapcat writes); - for stdin.")
    ],
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Import entries from LDIF: all of them, or none when any line is wrong."""
    from ams.directory import ldif, objects
    from ams.paths import read_file

    data = sys.stdin.buffer.read() if str(file) == "-" else read_file(file, "an LDIF file")
    with opened_directories(home) as instance:
        # Parsed as it is written: the import is one transaction, so a bad line anywhere
        # rolls back every entry before it.
        count = objects.import_entries(instance, directory_id, ldif.parse(data), actor=actor())
    if json_out:
        emit_json({"directory_id": directory_id, "imported": count})
        return
    console.print(f"Imported {count} entries into {directory_id}.")


@app.command("export")
def export(
    directory_id: DirectoryIdArgument,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write to this file (0600) instead of stdout.")
    ] = None,
    home: HomeOption = None,
) -> None:
    """Export every entry as LDIF (RFC 2849), parents first, ready for slapadd."""
    from ams.directory import ldif, objects
    from ams.paths import check_new_file

    if out is not None:
        # Replacing a file is what --out has always done here (the write is atomic).
        check_new_file(out, "--out", example=f"{directory_id}.ldif", force=True)
    with opened_directories(home) as instance:
        entries = list(objects.iter_entries(instance, directory_id))
    if out is None:
        for chunk in ldif.emit(entries):
            sys.stdout.write(chunk)
        sys.stdout.flush()
        return
    try:
        atomic_write(out, ldif.dump(entries).encode("utf-8"), mode=0o600)
    except PermissionError as exc:
        raise NotWritable(f"cannot write {out}: permission denied") from exc
    sys.stderr.write(f"Exported {len(entries)} entries of {directory_id} to {out}.\n")
