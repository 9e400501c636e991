"""ams device: devices registered by ams-agent."""

from __future__ import annotations

from typing import Annotated

import typer

from ams.cli._common import HomeOption, JsonOption, actor, console, emit_json, opened, print_table, when

app = typer.Typer(help="Devices whose administrator password AMS keeps.", no_args_is_help=True)

DeviceArgument = Annotated[str, typer.Argument(help="The device id (dev_...) or its name.")]


@app.command("list")
def list_(
    scope: Annotated[str | None, typer.Option("--scope", help="Only devices of this scope.")] = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """List devices with the state of their password."""
    from ams.vault import devices

    with opened(home) as instance:
        found = devices.list_devices(instance, scope=scope)
    if json_out:
        emit_json([d.to_dict() for d in found])
        return
    rows: list[list[str]] = []
    for d in found:
        rows.append(
            [
                d.id,
                d.name,
                d.scope,
                d.status,
                str(d.current_version) if d.current_version is not None else "-",
                when(d.password_expires_at, seconds=False),
                when(d.last_seen_at, seconds=False),
                "yes" if d.rotation_forced else "",
            ]
        )
    print_table(
        ["id", "name", "scope", "status", "version", "expires", "last seen", "forced"],
        rows,
        ids=("id", "name", "scope"),
    )


@app.command("register")
def register(
    name: Annotated[str, typer.Argument(help="The device's name (its host name).")],
    directory: Annotated[
        str, typer.Option("--directory", help="The directory (d-…) whose computer object it is bound to.")
    ],
    dn: Annotated[str, typer.Option("--dn", help="The DN of its computer object, which must exist.")],
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Register a device bound to its computer object in a directory; its token is printed once.

    The legacy agent (`ams-agent run --mode directory`) binds over LDAP as that DN with the
    token and keeps its password on the object. Agents can also register themselves with a
    registration key: `ams-agent register --directory D --dn DN`."""
    from ams.vault import legacy

    with opened(home) as instance:
        created = legacy.register_bound(instance, name, directory, dn, actor())
    if json_out:
        emit_json(created.to_dict())
        return
    console.print(f"Registered {name} as {created.device_id}, bound to {dn} in {directory}.")
    console.print(f"Device token (shown once): {created.token}")
    console.print(
        "On the device:  echo TOKEN | ams-agent register --server URL --token-stdin "
        f"--directory {directory} --dn '{dn}'"
    )


@app.command("show")
def show(device: DeviceArgument, home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Show one device (never its password: see `ams password get`)."""
    from ams.vault import devices

    with opened(home) as instance:
        info = devices.show(instance, device)
    if json_out:
        emit_json(info.to_dict())
        return
    for key, value in info.to_dict().items():
        console.print(f"{key + ':':24} {value if value is not None else '-'}")


@app.command("approve")
def approve(device: DeviceArgument, home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Approve a pending device, so it may report its password."""
    from ams.vault import devices

    with opened(home) as instance:
        info = devices.approve(instance, device, actor())
    if json_out:
        emit_json(info.to_dict())
        return
    console.print(f"Device {info.id} ({info.name}) is {info.status}.")


@app.command("disable")
def disable(device: DeviceArgument, home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Disable a device: its token opens nothing any more; its passwords stay readable."""
    from ams.vault import devices

    with opened(home) as instance:
        info = devices.disable(instance, device, actor())
    if json_out:
        emit_json(info.to_dict())
        return
    console.print(f"Device {info.id} ({info.name}) is {info.status}.")


@app.command("expire")
def expire(
    device: Annotated[str | None, typer.Argument(help="The device id or name.", show_default=False)] = None,
    scope: Annotated[str | None, typer.Option("--scope", help="Every device of this scope.")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Every device.")] = False,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Make devices rotate their password at the next check-in (reason "forced")."""
    from ams.vault import devices

    with opened(home) as instance:
        ids = devices.expire(instance, actor(), device=device, scope=scope, everything=everything)
    if json_out:
        emit_json({"expired": ids})
        return
    console.print(f"{len(ids)} device(s) will rotate at their next check-in.")
