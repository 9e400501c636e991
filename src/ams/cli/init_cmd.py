"""ams init: create an instance."""

from __future__ import annotations

from typing import Annotated

import typer

from ams.cli._common import HomeOption, JsonOption, actor, console, emit_json, home_of, read_secret
from ams.errors import BadInput

RECOVERY_WARNING = (
    "Keep the recovery password offline (on paper, in a safe). It is the only way to open "
    "a backup on another machine. Without the service key and without the recovery "
    "password, nothing AMS keeps can be recovered, by anyone."
)


def init(
    home: HomeOption = None,
    database: Annotated[
        str,
        typer.Option(
            "--database",
            envvar="AMS_DATABASE__URL",
            help="A postgresql:// URL (or AMS_DATABASE__URL); default: embedded SQLite in data/ams.db.",
        ),
    ] = "",
    recovery_password_stdin: Annotated[
        bool,
        typer.Option("--recovery-password-stdin", help="Read the recovery password from standard input."),
    ] = False,
    generate_recovery_password: Annotated[
        bool,
        typer.Option(
            "--generate-recovery-password", help="Generate a strong recovery password and print it once."
        ),
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Create an instance: its folders, database, master key, service key and recovery password."""
    from ams.instance import create_instance

    if recovery_password_stdin and generate_recovery_password:
        raise BadInput("choose one of --recovery-password-stdin and --generate-recovery-password")
    target = home_of(home)
    password: str | None = None
    if not generate_recovery_password:
        password = read_secret("recovery password", from_stdin=recovery_password_stdin, confirm=True)
    result = create_instance(target, recovery_password=password, database_url_option=database, actor=actor())
    if json_out:
        emit_json(
            {
                "instance_id": result.instance_id,
                "home": str(result.home),
                "database": {"engine": result.engine, "revision": result.revision},
                "master_key": {"fingerprint": result.fingerprint},
                "service_key": result.service_key_source,
                "recovery_password": result.recovery_password,
            }
        )
        return
    console.print(f"Created AMS instance {result.instance_id} in {result.home}")
    console.print(f"  database:        {result.engine} (schema {result.revision})")
    console.print(f"  master key:      fingerprint {result.fingerprint}")
    console.print(f"  service key:     {result.service_key_source}")
    if result.recovery_password:
        console.print(f"  recovery password (shown once, write it down): {result.recovery_password}")
    console.print(RECOVERY_WARNING)
