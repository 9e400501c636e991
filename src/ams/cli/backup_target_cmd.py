"""ams backup target: offsite targets and copies (ams.backup.targets, ams.backup.offsite)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ams.cli._common import HomeOption, JsonOption, actor, console, emit_json, opened, read_secret

app = typer.Typer(
    help="Offsite targets: S3-compatible buckets every verified backup is also copied to.",
    no_args_is_help=True,
)

NameArgument = Annotated[str, typer.Argument(help="The target's name.", show_default=False)]
EndpointOption = Annotated[
    str | None,
    typer.Option("--endpoint-url", help="The S3-compatible service (MinIO, Ceph, ...); default: AWS."),
]
RegionOption = Annotated[str | None, typer.Option("--region", help="The bucket's region.")]


@app.command("add")
def add(
    name: NameArgument,
    s3: Annotated[str, typer.Option("--s3", help="s3://BUCKET/PREFIX the copies go to.", show_default=False)],
    home: HomeOption = None,
    endpoint_url: EndpointOption = None,
    region: RegionOption = None,
    lock_days: Annotated[
        int | None, typer.Option("--lock-days", help="Object Lock each copy for N days (needs --lock-mode).")
    ] = None,
    lock_mode: Annotated[
        str | None, typer.Option("--lock-mode", help="governance or compliance (docs/security.md).")
    ] = None,
    keep_days: Annotated[
        int | None, typer.Option("--keep-days", help="Delete this instance's copies older than N days.")
    ] = None,
    keep_last: Annotated[
        int | None, typer.Option("--keep-last", help="Keep this instance's N newest copies.")
    ] = None,
    access_key_id: Annotated[
        str | None,
        typer.Option(
            "--access-key-id",
            help="Credentials kept sealed by AMS: the key id here, its secret on standard input. "
            "Without it: the AWS chain (environment, profile, instance role).",
        ),
    ] = None,
    drill_days: Annotated[
        int | None,
        typer.Option(
            "--drill-days", help="The service runs a restore drill from this target every N days (7: weekly)."
        ),
    ] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Replace a target of the same name.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Add a target; the bucket is checked first (and its Object Lock, with --lock-days)."""
    from ams.backup import targets

    secret = None
    if access_key_id is not None:
        if sys.stdin.isatty():
            console.print("The secret access key (not shown):")
        secret = read_secret("secret access key", from_stdin=not sys.stdin.isatty())
    with opened(home) as instance:
        target = targets.add_target(
            instance,
            name=name,
            url=s3,
            actor=actor(),
            endpoint_url=endpoint_url,
            region=region,
            lock_days=lock_days,
            lock_mode=lock_mode,
            keep_days=keep_days,
            keep_last=keep_last,
            access_key_id=access_key_id,
            secret=secret,
            drill_days=drill_days,
            replace=replace,
        )
    if json_out:
        emit_json(target.to_dict())
        return
    _print_target(target.to_dict())
    console.print("Every verified backup is copied there from now on; `ams backup target test` probes it.")


def _print_target(t: dict[str, Any], status: dict[str, Any] | None = None) -> None:
    lock = f"{t['lock_mode']} lock {t['lock_days']} days" if t["lock_days"] else "no lock"
    where = f" at {t['endpoint_url']}" if t["endpoint_url"] else ""
    console.print(
        f"{t['name']}  {t['url']}{where}  ({lock}; {t['retention']}; credentials: {t['credentials']})"
    )
    if status is None:
        return
    last = status.get("last_copy")
    if last:
        state = "ok" if last["state"] == "copied" else f"FAILED: {last['error']}"
        console.print(f"    last copy {last['backup_id']} at {last['at']}: {state}")
    else:
        console.print("    no copy yet")
    if status.get("missing"):
        console.print(f"    {status['missing']} verified backup(s) not copied yet (the next run retries)")
    drill = status.get("last_drill")
    if drill:
        console.print(
            f"    last drill {drill['at']}: {'ok' if drill['ok'] else 'FAILED: ' + str(drill['error'])}"
        )


@app.command("list")
def list_(home: HomeOption = None, json_out: JsonOption = False) -> None:
    """The targets, with the last copy to each and its state."""
    from ams.backup import offsite, targets

    with opened(home) as instance:
        found = [t.to_dict() for t in targets.list_targets(instance)]
        status = {s["name"]: s for s in offsite.offsite_status(instance)}
    if json_out:
        emit_json([{**t, "status": status.get(t["name"])} for t in found])
        return
    if not found:
        console.print(
            "No offsite targets: add one with `ams backup target add NAME --s3 s3://BUCKET/PREFIX`."
        )
    for t in found:
        _print_target(t, status.get(t["name"]))


@app.command("test")
def test(name: NameArgument, home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Write, read back and remove a small probe object; name the permission that is missing."""
    from ams.backup import targets

    with opened(home) as instance:
        report = targets.test_target(instance, name, actor=actor())
    if json_out:
        emit_json(report)
        return
    for step in report["steps"]:
        console.print(f"{step['step']:<12} {step['permission']:<36} ok")
    console.print(f"Target {name} works: AMS can write, read and remove objects under {report['url']}.")


@app.command("remove")
def remove(name: NameArgument, home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Forget a target and its stored credentials (the objects stay in the bucket)."""
    from ams.backup import targets

    with opened(home) as instance:
        target = targets.remove_target(instance, name, actor=actor())
    if json_out:
        emit_json(target.to_dict())
        return
    console.print(f"Target {name} removed; what {target.url} holds stays there.")


@app.command("sync")
def sync(
    name: Annotated[str | None, typer.Argument(help="One target (default: every target).")] = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Copy now every verified backup a target lacks, then apply its retention."""
    from ams.backup import offsite
    from ams.errors import OffsiteCopyFailed

    with opened(home) as instance:
        outcomes = [o.to_dict() for o in offsite.copy_pending(instance, actor=actor(), target=name)]
    if json_out:
        emit_json(outcomes)
    else:
        for o in outcomes:
            state = "copied" if o["ok"] else f"FAILED: {o['error']}"
            console.print(f"{o['backup_id']} -> {o['target']}: {state}")
        if not outcomes:
            console.print("Nothing to copy: every verified backup is there.")
    failed = [o for o in outcomes if not o["ok"]]
    if failed:
        raise OffsiteCopyFailed(f"{len(failed)} copy(ies) failed; the first: {failed[0]['error']}")


def objects_of(home: Path | None, name: str) -> list[dict[str, Any]]:
    """``ams backup list --target NAME``."""
    from ams.backup import offsite

    with opened(home) as instance:
        return offsite.list_objects(instance, name)
