"""ams security: the recovery password and unlocking the master key."""

from __future__ import annotations

from typing import Annotated

import typer

from ams.cli._common import (
    HomeOption,
    JsonOption,
    PasswordStdinOption,
    actor,
    console,
    emit_json,
    opened,
    read_secret,
)
from ams.cli.init_cmd import RECOVERY_WARNING
from ams.errors import BadInput

app = typer.Typer(help="The master key and its recovery password.", no_args_is_help=True)
recovery = typer.Typer(help="The offline recovery password.", no_args_is_help=True)
app.add_typer(recovery, name="recovery-password")


@recovery.command("set")
def set_recovery_password(
    home: HomeOption = None,
    password_stdin: PasswordStdinOption = False,
    generate: Annotated[bool, typer.Option("--generate", help="Generate one and print it once.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Replace the recovery password (the old one stops working at once)."""
    from ams import crypto

    if password_stdin and generate:
        raise BadInput("choose one of --password-stdin and --generate")
    with opened(home) as instance:
        instance.keyring.master_key()  # locked? say so before asking for anything
        if generate:
            password = crypto.generate_recovery_password()
        else:
            password = read_secret("new recovery password", from_stdin=password_stdin, confirm=True)
        set_at = instance.keyring.set_recovery_password(password, actor())
    shown = password if generate else None
    if json_out:
        emit_json({"recovery_password_set_at": set_at.isoformat(), "recovery_password": shown})
        return
    console.print(f"The recovery password was replaced at {set_at.isoformat()}.")
    if shown:
        console.print(f"New recovery password (shown once, write it down): {shown}")
    console.print("Backups made before now still need the previous recovery password on another machine.")
    console.print(RECOVERY_WARNING)


@app.command("unlock")
def unlock(
    home: HomeOption = None,
    password_stdin: PasswordStdinOption = False,
    move_to_key_file: Annotated[
        bool,
        typer.Option(
            "--move-to-key-file",
            help="Write keys/service.key although the service's key came from elsewhere.",
        ),
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Unlock the master key with the recovery password and write a new service key."""
    with opened(home) as instance:
        keyring = instance.keyring
        already = keyring.state == "unlocked"
        if not already:
            password = read_secret("recovery password", from_stdin=password_stdin)
            keyring.unlock_with_recovery_password(password, actor(), move_to_key_file=move_to_key_file)
        result = {
            "state": str(keyring.state),
            "fingerprint": keyring.fingerprint,
            "already_unlocked": already,
            "service_key": keyring.source.describe(),
        }
    if json_out:
        emit_json(result)
    elif already:
        console.print(f"The master key is already unlocked (fingerprint {result['fingerprint']}).")
    else:
        console.print(
            f"Unlocked the master key (fingerprint {result['fingerprint']}); "
            f"a new service key is in {result['service_key']}."
        )
