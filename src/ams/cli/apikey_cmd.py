"""ams apikey: credentials for the REST API."""

from __future__ import annotations

from typing import Annotated

import typer

from ams.cli._common import HomeOption, JsonOption, actor, console, emit_json, opened, print_table, when

app = typer.Typer(help="API keys for the REST API.", no_args_is_help=True)


@app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="What the key is for.")],
    role: Annotated[str, typer.Option("--role", help="admin or reader.")] = "reader",
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Create an API key; its secret is printed once."""
    from ams import apikeys

    parsed = apikeys.parse_role(role)
    with opened(home) as instance:
        created = apikeys.create(instance, name, parsed, actor())
    if json_out:
        emit_json(created.to_dict())
        return
    console.print(f"Created API key {created.info.id} ({created.info.role}) named {created.info.name!r}.")
    console.print(f"Secret (shown once): {created.secret}")
    console.print(f"Use it as:  Authorization: Bearer {created.token}")


@app.command("list")
def list_(
    home: HomeOption = None,
    include_revoked: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    json_out: JsonOption = False,
) -> None:
    """List API keys (never their secrets)."""
    from ams import apikeys

    with opened(home) as instance:
        keys = apikeys.list_keys(instance, include_revoked=include_revoked)
    if json_out:
        emit_json([k.to_dict() for k in keys])
        return
    rows: list[list[str]] = []
    for k in keys:
        rows.append(
            [
                k.id,
                k.name,
                str(k.role),
                when(k.created_at, seconds=False),
                when(k.last_used_at, seconds=False),
                when(k.revoked_at, seconds=False),
            ]
        )
    print_table(["id", "name", "role", "created", "last used", "revoked"], rows, ids=("id", "name"))


@app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (ak_...).")], home: HomeOption = None
) -> None:
    """Revoke an API key; requests with it are refused from now on."""
    from ams import apikeys

    with opened(home) as instance:
        info = apikeys.revoke(instance, key_id, actor())
    console.print(f"Revoked API key {info.id} ({info.name}).")
