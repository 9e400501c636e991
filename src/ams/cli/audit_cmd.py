"""ams audit: the audit trail."""

from __future__ import annotations

from typing import Annotated

import typer

from ams.cli._common import HomeOption, JsonOption, actor, console, emit_json, opened, print_table, when
from ams.errors import BadInput

app = typer.Typer(help="The audit trail.", no_args_is_help=True)


@app.command("list")
def list_(
    home: HomeOption = None,
    since: Annotated[
        str | None, typer.Option("--since", help="A duration (7d, 12h) or an ISO date/time.")
    ] = None,
    event: Annotated[int | None, typer.Option("--event", help="Only this event id.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100000)] = 1000,
    json_out: JsonOption = False,
) -> None:
    """List audit events, oldest first (ids in docs/events.md)."""
    from ams import audit
    from ams.clock import parse_since

    with opened(home) as instance:
        since_at = None
        if since is not None:
            try:
                since_at = parse_since(since, instance.clock.now())
            except ValueError as exc:
                raise BadInput(f"--since: {exc}") from None
        with instance.session() as session:
            events = audit.list_events(session, since=since_at, event_id=event, limit=limit)
    if json_out:
        emit_json([e.to_dict() for e in events])
        return
    rows: list[list[str]] = []
    for e in events:
        rows.append([when(e.at), str(e.event_id), e.name, e.actor, e.outcome, e.target or ""])
    print_table(
        ["time (UTC)", "id", "event", "actor", "outcome", "target"], rows, ids=("id", "actor", "target")
    )


@app.command("prune")
def prune(home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Remove events older than [audit] retention_days in ams.toml now (the service also
    does it every hour); records event 1004 (and 1005 when the retention changed)."""
    from ams.audit_retention import prune as prune_trail

    with opened(home) as instance:
        result = prune_trail(instance, actor())
    if json_out:
        emit_json(result.to_dict())
        return
    if result.retention_changed is not None:
        change = result.retention_changed
        console.print(f"retention: {change['from'] or 'none recorded'} -> {change['to']} days (event 1005)")
    if result.before is None:
        console.print("retention_days is 0 in ams.toml: every event is kept, nothing was removed")
    else:
        console.print(f"removed:   {result.removed} events before {when(result.before)} (event 1004)")
    oldest = when(result.size.oldest_at) if result.size.oldest_at else "none"
    console.print(f"left:      {result.size.events} events, the oldest {oldest}")
