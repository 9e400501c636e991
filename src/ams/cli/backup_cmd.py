"""ams backup: create, list, verify and restore backups; the schedule and retention."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ams.cli import backup_target_cmd
from ams.cli._common import (
    HomeOption,
    JsonOption,
    PasswordStdinOption,
    actor,
    console,
    emit_json,
    finish_interrupted_restore,
    home_of,
    opened,
    read_secret,
)
from ams.errors import AMSError, BadInput

if TYPE_CHECKING:
    from ams.instance import Instance

app = typer.Typer(
    help="Backups of the whole instance: create, list, verify, restore, schedule.", no_args_is_help=True
)
schedule_app = typer.Typer(help="When backups run and how long they are kept.", no_args_is_help=True)
app.add_typer(schedule_app, name="schedule")
app.add_typer(backup_target_cmd.app, name="target")

SourceArgument = Annotated[
    str, typer.Argument(help="The .amsbak file, or an s3://BUCKET/KEY object.", show_default=False)
]
EndpointOption = Annotated[
    str | None,
    typer.Option("--endpoint-url", help="For s3:// on a service other than AWS (MinIO, Ceph, ...)."),
]
RegionOption = Annotated[str | None, typer.Option("--region", help="For s3://: the bucket's region.")]


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[int, int, str], None] | None]:
    """A Rich progress bar on a terminal; nothing otherwise (scripts, --json, pipes)."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=console.__class__(stderr=True),
        transient=True,
    )
    task = bar.add_task("backup", total=None)
    with bar:

        def update(done: int, total: int, phase: str) -> None:
            bar.update(task, completed=done, total=total or None, description=phase)

        yield update


@app.command("create")
def create(
    home: HomeOption = None,
    dest: Annotated[
        Path | None,
        typer.Option("--dest", help="Folder to write to (default: the schedule's, else backups/)."),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Write an encrypted, verified-by-seal backup of the database, config folder and snapshots."""
    from ams import backup

    target = home_of(home)
    finish_interrupted_restore(target)
    with _progress(not json_out) as progress:
        result = backup.create_backup_at(target, dest=dest, actor=actor(), progress=progress)
    if json_out:
        emit_json(result.to_dict())
        return
    console.print(f"Backup {result.backup_id} written to {result.path} ({result.size_bytes:,} bytes).")
    for copy in result.offsite or ():
        state = (
            f"copied to {copy['key']}"
            if copy["ok"]
            else f"NOT copied: {copy['error']} (the next run retries)"
        )
        console.print(f"Offsite target {copy['target']}: {state}.")
    console.print(
        "Restoring it on another machine needs the recovery password set at "
        f"{result.recovery_password_set_at}."
    )


@app.command("list")
def list_(
    home: HomeOption = None,
    rescan: Annotated[
        bool,
        typer.Option(
            "--rescan",
            help="First reconcile the catalog with the archives the backup folders hold (by their headers).",
        ),
    ] = False,
    target: Annotated[
        str | None,
        typer.Option("--target", help="List what an offsite target's bucket holds (read from the bucket)."),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """The backups this instance made, newest first (with the recovery password each needs)."""
    from ams import backup
    from ams.backup.catalog import rescan as rescan_catalog

    if target is not None:
        if rescan:
            raise BadInput("--rescan reads the local folders; --target reads a bucket: choose one")
        _list_target(home, target, json_out)
        return
    finish_interrupted_restore(home_of(home))
    with opened(home) as instance:
        found = rescan_catalog(instance, actor=actor()) if rescan else None
        entries = [e.to_dict() for e in backup.list_backups(instance)]
    if json_out:
        emit_json({"rescan": found.to_dict(), "backups": entries} if found else entries)
        return
    if found:
        console.print(
            f"Rescanned {len(found.folders)} folder(s): {len(found.added)} added, {len(found.moved)} moved, "
            f"{len(found.removed)} removed (file gone), {len(found.unreadable)} unreadable."
        )
        for path in found.unreadable:
            console.print(f"    not a valid backup of this instance: {path}")
    if not entries:
        console.print("No backups yet: run `ams backup create`.")
        return
    for e in entries:
        state = e["status"] if e["status"] != "complete" else ("ok" if e["exists"] else "file missing")
        verified = {True: "verified", False: "VERIFY FAILED", None: "not verified"}[e["verified_ok"]]
        size = f"{e['size_bytes']:,} bytes" if e["size_bytes"] is not None else "-"
        console.print(
            f"{e['backup_id']}  {e['created_at']}  {e['kind']:<11}  {state:<12}  {verified:<13}  {size}"
        )
        if e["path"]:
            console.print(f"    {e['path']}")
        if e["error"]:
            console.print(f"    error: {e['error']}")
        if e["recovery_password_set_at"]:
            console.print(f"    needs the recovery password set at {e['recovery_password_set_at']}")
        if e["written_here"] is False:
            console.print(
                f"    written by another home ({e['home_id'] or 'unknown'}): retention leaves it alone"
            )


def _list_target(home: Path | None, name: str, json_out: bool) -> None:
    objects = backup_target_cmd.objects_of(home, name)
    if json_out:
        emit_json(objects)
        return
    if not objects:
        console.print(f"Target {name} holds no backups yet.")
    for o in objects:
        lock = f"locked ({o['lock_mode'].lower()}) until {o['lock_until']}" if o["locked"] else "not locked"
        console.print(
            f"{o['backup_id'] or '?'}  {o['created_at']}  {o['kind'] or '?':<11}  {o['size_bytes']:,} "
            f"bytes  {lock}"
        )
        console.print(f"    {o['url']}")


def _maybe_instance(home: Path | None) -> Instance | None:
    """The instance, when --home / AMS_HOME names one that opens; verify works without.

    A --home that cannot be an instance folder at all (a file) is still an error.
    """
    from ams.instance import open_instance

    try:
        target = home_of(home)
    except BadInput:
        if home is not None:
            raise
        return None
    try:
        return open_instance(target)
    except (AMSError, OSError):
        return None


def _password_source(from_stdin: bool) -> Callable[[str], str]:
    def ask(hint: str) -> str:
        if not from_stdin and sys.stdin.isatty():
            console.print(f"This backup needs {hint}.")
        return read_secret("recovery password", from_stdin=from_stdin)

    return ask


@app.command("verify")
def verify(
    source: SourceArgument,
    home: HomeOption = None,
    endpoint_url: EndpointOption = None,
    region: RegionOption = None,
    deep: Annotated[
        bool, typer.Option("--deep", help="Restore into a scratch folder and decrypt samples.")
    ] = False,
    allow_unrecoverable: Annotated[
        bool,
        typer.Option(
            "--allow-unrecoverable",
            help="With --deep: succeed although passwords cannot be decrypted (a lost key, accepted).",
        ),
    ] = False,
    password_stdin: PasswordStdinOption = False,
    json_out: JsonOption = False,
) -> None:
    """Check a backup offline: structure, sums, seal, payload; --deep adds a restore drill.

    An s3:// object is downloaded whole first (checked against its size and SHA-256), then
    checked as a file. A drill that finds passwords the backup cannot decrypt fails (exit
    status 88) unless --allow-unrecoverable.
    """
    from ams import backup
    from ams.backup import remote
    from ams.backup.verify import verify_and_record
    from ams.errors import BackupUnrecoverable

    file = Path(source)
    if not remote.is_remote(source) and (endpoint_url or region):
        raise BadInput("--endpoint-url and --region go with an s3:// source")
    instance = _maybe_instance(home)
    failure: BackupUnrecoverable | None = None
    try:
        can_ask = password_stdin or sys.stdin.isatty()
        password = _password_source(password_stdin) if can_ask else None
        options: dict[str, Any] = {
            "password": password,
            "deep": deep,
            "allow_unrecoverable": allow_unrecoverable,
        }
        if remote.is_remote(source):
            report = remote.verify_url(
                source, instance=instance, actor=actor(), endpoint_url=endpoint_url, region=region, **options
            )
        elif instance is not None:
            report = verify_and_record(file, instance, actor=actor(), **options)
        else:
            report = backup.verify_backup(file, **options)
    except BackupUnrecoverable as exc:
        # The report is shown all the same: the drill's findings are what the reader needs.
        report, failure = exc.report, exc
    finally:
        if instance is not None:
            instance.close()
    if json_out:
        emit_json(report)
    else:
        _print_verify(source, report)
    if failure is not None:
        raise failure


def _print_verify(file: Path | str, report: dict[str, Any]) -> None:
    state = "OK" if report["ok"] else "archive OK, restore drill FAILED"
    console.print(f"{file}: {state} ({', '.join(report['checks'])}).")
    console.print(
        f"Backup {report['backup_id']} of instance {report['instance_id']}, {report['kind']}, made "
        f"{report['created_at']}; key from the {report['key_from']}."
    )
    console.print(f"It needs {report['needs']}.")
    drill = report.get("deep")
    if drill and drill.get("certificates_checked"):
        for cert in drill["certificates"]:
            if cert["has_private_key"]:
                console.print(
                    f"  certificate {cert['thumbprint'][:16]} ({cert['scope']}): private key present, "
                    f"{cert['sample_decrypted']} of {cert['passwords']} passwords decrypted as a sample"
                )
            else:
                console.print(
                    f"  certificate {cert['thumbprint'][:16]} ({cert['scope']}): NO private key, "
                    f"{cert['passwords']} passwords unrecoverable"
                )
        accepted = " (accepted with --allow-unrecoverable)" if report.get("unrecoverable_accepted") else ""
        console.print(
            f"Passwords unrecoverable in this backup: {drill['unrecoverable_passwords']}{accepted}."
        )
    elif drill:
        console.print(f"Restore drill: {drill.get('reason')}.")


@app.command("restore")
def restore(
    source: SourceArgument,
    home: HomeOption = None,
    endpoint_url: EndpointOption = None,
    region: RegionOption = None,
    password_stdin: PasswordStdinOption = False,
    yes: Annotated[bool, typer.Option("--yes", help="Replace the current instance without asking.")] = False,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="Restoring into an empty home: a postgresql:// URL to restore onto (its password "
            "from PGPASSWORD or ~/.pgpass), or `sqlite` (the default) for the embedded database.",
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Replace this instance with a backup (the current state is saved as a pre-restore backup).

    An s3:// object is downloaded whole beside the home first and checked; nothing partial
    is ever restored. Credentials: a target of this home for the bucket, else the AWS chain.
    """
    from ams import backup
    from ams.backup import remote

    file = Path(source)
    if not remote.is_remote(source) and (endpoint_url or region):
        raise BadInput("--endpoint-url and --region go with an s3:// source")
    target = home_of(home)
    if target.looks_initialised() and not yes:
        if not sys.stdin.isatty() or password_stdin:
            raise BadInput(
                f"{target.root} holds an instance that the restore replaces: pass --yes to confirm; "
                "nothing was changed"
            )
        if not typer.confirm(f"Replace the instance at {target.root} with {source}?", default=False):
            raise typer.Abort()
    can_ask = password_stdin or sys.stdin.isatty()
    password = _password_source(password_stdin) if can_ask else None
    if remote.is_remote(source):
        result = remote.restore_url(
            source,
            target,
            actor=actor(),
            password=password,
            endpoint_url=endpoint_url,
            region=region,
            database_url=database_url,
        )
    else:
        result = backup.restore_backup(
            file, target, actor=actor(), password=password, database_url=database_url
        )
    if json_out:
        emit_json(result.to_dict())
        return
    if result.resolved_interrupted:
        console.print(f"An interrupted restore was found first and {result.resolved_interrupted}.")
    console.print(
        f"Restored backup {result.backup_id} (made {result.created_at}) into {result.home} "
        f"({result.database})."
    )
    if result.pre_restore:
        console.print(f"The previous state was saved as {result.pre_restore}.")
    elif result.pre_restore_skipped:
        console.print(f"No pre-restore backup was written: {result.pre_restore_skipped}.")
    if result.migrated_from:
        console.print(f"The schema was migrated forward from {result.migrated_from}.")
    if result.new_service_key:
        console.print("A new service key was written for this machine.")
    recovery = result.recovery_password or {}
    if recovery.get("notice"):
        console.print(f"[yellow]Note: {recovery['notice']}.[/]")
    elif recovery.get("outcome") == "kept":
        console.print(
            f"The recovery password stays the one set at {recovery['set_at']} (newer than the backup's)."
        )
    if result.schedule_paused:
        console.print(f"[yellow]Scheduled backups are paused: {result.schedule_paused}.[/]")
    rescanned = result.catalog or {}
    if rescanned.get("error"):
        console.print(f"The backup catalog could not be reconciled: {rescanned['error']}.")
    elif rescanned.get("added") or rescanned.get("removed") or rescanned.get("moved"):
        console.print(
            f"The backup catalog was reconciled with the backup folders: {len(rescanned['added'])} "
            f"added, {len(rescanned['removed'])} removed, {len(rescanned['moved'])} moved."
        )
    console.print("Start the service (`ams serve`) and confirm the settings with `ams status`.")


def _schedule_view(instance: Instance) -> dict[str, Any]:
    from ams import backup
    from ams.backup.schedule import format_duration

    settings = backup.get_settings(instance)
    view = settings.to_dict()
    view["every"] = format_duration(settings.every_seconds) if settings.every_seconds else None
    view["destination"] = settings.destination or str(instance.home.backups_dir)
    view["description"] = settings.describe()
    view["status"] = backup.schedule_status(instance)
    return view


@schedule_app.command("show")
def schedule_show(home: HomeOption = None, json_out: JsonOption = False) -> None:
    """The schedule, the retention, the last run and the next."""
    finish_interrupted_restore(home_of(home))
    with opened(home) as instance:
        view = _schedule_view(instance)
    if json_out:
        emit_json(view)
        return
    status = view["status"]
    console.print(f"Backups: {view['description']}; to {view['destination']}.")
    if status.get("paused"):
        console.print(f"Scheduled backups are PAUSED: {status['paused']}.")
    else:
        console.print(f"Next scheduled backup: {status['next_scheduled']}.")
    last = status["last_scheduled_run"]
    if last:
        console.print(
            f"Last scheduled run: {last['at']}, {last['result']}"
            + (f" ({last['error']})" if last["error"] else "")
        )


@schedule_app.command("set")
def schedule_set(
    home: HomeOption = None,
    at: Annotated[str | None, typer.Option("--at", help="Daily at HH:MM (UTC).")] = None,
    every: Annotated[str | None, typer.Option("--every", help="Every DURATION (30m, 6h, 1d, 1w).")] = None,
    dest: Annotated[Path | None, typer.Option("--dest", help="Folder scheduled backups go to.")] = None,
    retain_days: Annotated[
        int | None,
        typer.Option("--retain-days", help="Keep every backup younger than N days (0-365; 0: no age rule)."),
    ] = None,
    keep_last: Annotated[
        int | None, typer.Option("--keep-last", help="Keep the N newest (0: no such rule).")
    ] = None,
    keep_daily: Annotated[int | None, typer.Option("--keep-daily", help="Keep the newest of N days.")] = None,
    keep_weekly: Annotated[
        int | None, typer.Option("--keep-weekly", help="Keep the newest of N weeks.")
    ] = None,
    keep_monthly: Annotated[
        int | None, typer.Option("--keep-monthly", help="Keep the newest of N months.")
    ] = None,
    create: Annotated[
        bool, typer.Option("--create", help="Create the --dest folder (0700) if it does not exist.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Change the schedule or the retention (what is not given stays).

    Retention rules combine: a backup is kept when --retain-days or any --keep-* keeps it;
    0 turns a rule off, and with no rule every backup is kept.
    """
    from ams import backup

    with opened(home) as instance:
        backup.set_settings(
            instance,
            actor=actor(),
            at=at,
            every=every,
            destination=dest,
            retain_days=retain_days,
            keep_last=keep_last,
            keep_daily=keep_daily,
            keep_weekly=keep_weekly,
            keep_monthly=keep_monthly,
            create=create,
        )
        view = _schedule_view(instance)
    if json_out:
        emit_json(view)
        return
    console.print(f"Backups: {view['description']}; to {view['destination']}.")
    console.print(f"Next scheduled backup: {view['status']['next_scheduled']}.")


@app.command("drill")
def drill(
    target: Annotated[str, typer.Option("--target", help="The offsite target to drill.", show_default=False)],
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Restore the newest offsite copy into a scratch home and deep-verify it; say its age and
    how long the restore took."""
    from ams.backup import remote

    with opened(home) as instance:
        report = remote.drill(instance, target, actor=actor())
    if json_out:
        emit_json(report)
        return
    console.print(
        f"Drill from target {target}: {report['backup_id']} ({report['url']}), {report['age_hours']} "
        f"hours old, "
        f"restored and deep-verified in {report['restore_seconds']} s (download "
        f"{report['download_seconds']} s)."
    )
