"""ams password: read device passwords (always audited) and set the password policy."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from ams.cli._common import HomeOption, JsonOption, actor, console, emit_json, note, opened

app = typer.Typer(help="Device administrator passwords.", no_args_is_help=True)


@app.command("get")
def get(
    device: Annotated[str, typer.Argument(help="The device id (dev_...) or its name.")],
    history: Annotated[
        bool, typer.Option("--history", help="Also the older passwords, newest first.")
    ] = False,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Print a device's password. Every read is recorded in the audit trail (who, when).

    A current password that cannot be decrypted (its certificate's key lost) is an error
    (exit status 54, or 33 when it does not decrypt); --history lists it as unrecoverable.
    """
    from ams.vault import passwords

    with opened(home) as instance:
        answer = passwords.read(instance, device, actor(), history=history)
    if json_out:
        emit_json(answer)
        if not history:
            # The document says why; the status says that there is no password to use.
            passwords.require_recoverable(answer)
        return
    if not history:
        # Only the password goes to standard output, so `$(ams password get D)` is the password.
        note(
            f"{answer['device_name']} ({answer['device_id']}) {answer['account']}, version "
            f"{answer['version']}, effective {answer['effective_at']}, expires {answer['expires_at']}"
        )
        sys.stdout.write(passwords.require_recoverable(answer) + "\n")
        return
    # Plain lines, not a table: a table would wrap a long password across lines.
    entries: list[dict[str, Any]] = ([answer["current"]] if answer["current"] else []) + answer["history"]
    for e in entries:
        label = "current" if e is answer["current"] else "history"
        shown = e["password"] if e["recoverable"] else "(unrecoverable: " + e["unrecoverable_reason"] + ")"
        sys.stdout.write(
            f"v{e['version']}\t{label}\t{e['effective_at'][:19]}\t{e['account']}\t"
            f"{e['certificate_thumbprint'][:16]}\t{shown}\n"
        )


@app.command("policy")
def policy_(
    scope: Annotated[str, typer.Option("--scope", help="agent, a directory id, or default.")] = "agent",
    length: Annotated[int | None, typer.Option("--length", help="Length of generated passwords.")] = None,
    max_age_days: Annotated[
        int | None, typer.Option("--max-age-days", help="Rotate after this many days.")
    ] = None,
    keep_count: Annotated[
        int | None, typer.Option("--keep-count", help="History passwords to keep (count).")
    ] = None,
    keep_days: Annotated[
        int | None, typer.Option("--keep-days", help="Keep history passwords superseded within these days.")
    ] = None,
    account: Annotated[str | None, typer.Option("--account", help="The account agents manage.")] = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Show a scope's password policy, or change the values given.

    History passwords are removed only when BOTH limits are exceeded.
    """
    from ams.vault import policy

    with opened(home) as instance:
        result = policy.set_policy(
            instance,
            scope,
            actor(),
            length=length,
            max_age_days=max_age_days,
            history_keep_count=keep_count,
            history_keep_days=keep_days,
            account=account,
        )
    if json_out:
        emit_json(result.to_dict())
        return
    for key, value in result.to_dict().items():
        console.print(f"{key + ':':20} {value}")
