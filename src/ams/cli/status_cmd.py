"""ams status: the instance at a glance."""

from __future__ import annotations

from typing import Any

from ams.cli._common import HomeOption, JsonOption, console, emit_json, opened


def status(home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Show the instance: database, master key, recovery password, service, counts."""
    from ams.status import instance_status

    with opened(home) as instance:
        data = instance_status(instance)
    if json_out:
        emit_json(data)
        return
    mk = data["master_key"]
    db = data["database"]
    service = data["service"]
    console.print(f"instance:          {data['instance_id']}  (AMS {data['ams_version']})")
    console.print(f"home:              {data['home']}")
    console.print(f"database:          {db['engine']} {db['url']}  schema {db['revision']}")
    state = "[green]unlocked[/]" if mk["state"] == "unlocked" else "[red]LOCKED[/]"
    console.print(f"master key:        {state}  fingerprint {mk['fingerprint']}")
    if mk["state"] != "unlocked":
        console.print(f"                   {mk['locked_reason']}")
        console.print("                   run `ams security unlock` with the recovery password")
    console.print(f"recovery password: set {data['recovery_password_set_at'] or 'never'}")
    if data.get("recovery_password_notice"):
        console.print(f"                   [yellow]{data['recovery_password_notice']}[/]")
    running = f"running (pid {service['pid']})" if service["running"] else "not running"
    console.print(f"service:           {running}")
    counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in data["counts"].items())
    console.print(f"holds:             {counts}")
    _print_backups(data.get("backup"))
    _print_offsite(data.get("offsite") or [])
    _print_audit(data.get("audit"))
    for warning in data.get("warnings") or []:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)


def _print_offsite(targets: list[dict[str, Any]]) -> None:
    """Per offsite target: the last copy's state and time (ams.backup.offsite)."""
    for t in targets:
        last = t.get("last_copy")
        if not last:
            state = "[yellow]no copy yet[/]"
        elif last["state"] == "failed":
            state = f"[red]FAILED[/] {last['at']}: {last['error']}"
        else:
            state = f"[green]ok[/] {last['at']} ({last['backup_id']})"
        missing = f"; {t['missing']} not copied yet" if t.get("missing") else ""
        console.print(f"offsite {t['name']}:".ljust(19) + f"{state}{missing}")


def _print_backups(backup: dict[str, object] | None) -> None:
    """The last backup and its result, the last good one, and the next scheduled run."""
    if not backup:
        return
    last = backup.get("last_backup")
    if isinstance(last, dict):
        if last["result"] == "success":
            console.print(f"last backup:       [green]ok[/] {last['at']} ({last['kind']}) {last['path']}")
        else:
            console.print(f"last backup:       [red]FAILED[/] {last['at']} ({last['kind']}): {last['error']}")
            good = backup.get("last_success_at")
            console.print(f"last good backup:  {good or 'none yet'}")
    else:
        console.print("last backup:       [yellow]none yet[/]: run `ams backup create`")
    failures = backup.get("consecutive_failures") or 0
    if failures:
        console.print(
            f"                   {failures} scheduled run(s) in a row failed: see `ams backup list`"
        )
    if backup.get("paused"):
        console.print(f"next backup:       [yellow]PAUSED[/]: {backup['paused']}")
        return
    console.print(f"next backup:       {backup.get('next_scheduled')}  ({backup.get('schedule')})")


def _print_audit(trail: dict[str, object] | None) -> None:
    """The audit trail's size, its oldest event, and how long events are kept."""
    if not trail:
        return
    days = trail["retention_days"]
    kept = f"kept {days} days" if days else "kept for ever"
    since = f"oldest {trail['oldest_at']}" if trail["oldest_at"] else "none yet"
    console.print(f"audit trail:       {trail['events']} events, {since} ({kept}; `ams audit prune`)")
