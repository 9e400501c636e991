"""ams user: the web console's local users."""

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
    when,
)
from ams.errors import BadInput

app = typer.Typer(help="Local users of the web console.", no_args_is_help=True)

NameArgument = Annotated[str, typer.Argument(help="The user's login name.")]


def _new_password(password_stdin: bool, generate: bool) -> tuple[str, bool]:
    from ams import crypto

    if password_stdin and generate:
        raise BadInput("choose one of --password-stdin and --generate")
    if generate:
        return crypto.generate_recovery_password(), True
    return read_secret("console password", from_stdin=password_stdin, confirm=True), False


@app.command("create")
def create(
    name: NameArgument,
    role: Annotated[str, typer.Option("--role", help="admin or reader.")] = "reader",
    home: HomeOption = None,
    password_stdin: PasswordStdinOption = False,
    generate: Annotated[
        bool, typer.Option("--generate", help="Generate a password and print it once.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Create a console user; the password is typed twice, read from stdin, or generated."""
    from ams import apikeys, users

    parsed = apikeys.parse_role(role)
    users.check_name(name)
    with opened(home) as instance:
        password, shown = _new_password(password_stdin, generate)
        info = users.create_user(instance, name, parsed, password, actor())
    if json_out:
        emit_json({**info.to_dict(), "password": password if shown else None})
        return
    console.print(f"Created console user {info.name!r} ({info.role}).")
    if shown:
        console.print(f"Password (shown once): {password}")


@app.command("list")
def list_(home: HomeOption = None, json_out: JsonOption = False) -> None:
    """List console users (never their password hashes)."""
    from rich.table import Table

    from ams import users

    with opened(home) as instance:
        found = users.list_users(instance)
    if json_out:
        emit_json([u.to_dict() for u in found])
        return
    table = Table("name", "role", "created", "last login", "disabled")
    for u in found:
        table.add_row(
            u.name,
            str(u.role),
            when(u.created_at, seconds=False),
            when(u.last_login_at, seconds=False),
            when(u.disabled_at, seconds=False),
        )
    console.print(table)


@app.command("disable")
def disable(name: NameArgument, home: HomeOption = None) -> None:
    """Disable a user: they cannot log in, and their open sessions end now."""
    from ams import users

    with opened(home) as instance:
        info = users.disable_user(instance, name, actor())
    console.print(f"Console user {info.name!r} is disabled; their sessions have ended.")


@app.command("passwd")
def passwd(
    name: NameArgument,
    home: HomeOption = None,
    password_stdin: PasswordStdinOption = False,
    generate: Annotated[
        bool, typer.Option("--generate", help="Generate a password and print it once.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Replace a user's password; their open sessions end."""
    from ams import users

    with opened(home) as instance:
        password, shown = _new_password(password_stdin, generate)
        info = users.set_password(instance, name, password, actor())
    if json_out:
        emit_json({**info.to_dict(), "password": password if shown else None})
        return
    console.print(f"The password of {info.name!r} was replaced; their sessions have ended.")
    if shown:
        console.print(f"Password (shown once): {password}")
