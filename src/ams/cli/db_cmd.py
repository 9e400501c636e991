"""ams db: the database schema."""

from __future__ import annotations

import typer

from ams.cli._common import (
    HomeOption,
    JsonOption,
    actor,
    console,
    emit_json,
    finish_interrupted_restore,
    home_of,
)

app = typer.Typer(help="The database schema.", no_args_is_help=True)


@app.command("upgrade")
def upgrade(home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Migrate the schema forward to this version of AMS (take a backup first)."""
    from ams import audit
    from ams.db import migrate
    from ams.instance import open_instance

    where = home_of(home)
    finish_interrupted_restore(where)
    instance = open_instance(where, check_schema=False)
    try:
        before = migrate.current_revision(instance.engine)
        migrate.upgrade(instance.engine)
        after = migrate.head_revision()
        if before != after:
            with instance.transaction() as session:
                audit.record(
                    session,
                    instance.clock,
                    audit.Event.SCHEMA_UPGRADED,
                    actor=actor(),
                    details={"from": before, "to": after},
                )
    finally:
        instance.close()
    if json_out:
        emit_json({"from": before, "to": after})
    elif before == after:
        console.print(f"The schema is already at {after}.")
    else:
        console.print(f"Migrated the schema from {before} to {after}.")
