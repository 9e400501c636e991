"""ams regkey: registration keys, which agents present once to register a device."""

from __future__ import annotations

from typing import Annotated

import typer

from ams.cli._common import HomeOption, JsonOption, actor, console, emit_json, opened, print_table, when

app = typer.Typer(help="Registration keys for ams-agent.", no_args_is_help=True)


@app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="A unique name (what the key is for).")],
    limit: Annotated[
        int | None,
        typer.Option("--limit", min=1, help="How many devices it may register (default: no limit)."),
    ] = None,
    approval: Annotated[
        bool, typer.Option("--approval", help="Devices it registers wait for `ams device approve`.")
    ] = False,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Create a registration key; the key is printed once."""
    from ams.vault import regkeys

    with opened(home) as instance:
        created = regkeys.create(instance, name, actor(), limit=limit, approval=approval)
    if json_out:
        emit_json(created.to_dict())
        return
    info = created.info
    limit_text = f"up to {info.activation_limit} devices" if info.activation_limit else "no limit"
    approval_text = ", each approved by an administrator" if info.approval_required else ""
    console.print(f"Created registration key {info.id} named {info.name!r} ({limit_text}{approval_text}).")
    console.print(f"Key (shown once): {created.key}")
    console.print("On a device:  echo KEY | ams-agent register --server URL --registration-key-stdin")


@app.command("list")
def list_(home: HomeOption = None, json_out: JsonOption = False) -> None:
    """List registration keys (never their secrets)."""
    from ams.vault import regkeys

    with opened(home) as instance:
        keys = regkeys.list_keys(instance)
    if json_out:
        emit_json([k.to_dict() for k in keys])
        return
    rows: list[list[str]] = []
    for k in keys:
        rows.append(
            [
                k.id,
                k.name,
                str(k.used_count),
                str(k.activation_limit) if k.activation_limit else "-",
                "yes" if k.approval_required else "no",
                k.state,
                when(k.created_at, seconds=False),
            ]
        )
    print_table(["id", "name", "used", "limit", "approval", "state", "created"], rows, ids=("id", "name"))


@app.command("disable")
def disable(
    key: Annotated[str, typer.Argument(help="The key id (rk_...) or name.")],
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Disable a registration key: no more registrations with it (registered devices keep working)."""
    from ams.vault import regkeys

    with opened(home) as instance:
        info = regkeys.disable(instance, key, actor())
    if json_out:
        emit_json(info.to_dict())
        return
    console.print(f"Disabled registration key {info.id} ({info.name}).")
