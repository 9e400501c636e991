"""The ``ams`` entry point: the command tree and the one place errors become exit statuses.

Start-up time matters (every command, every script, the backup benchmark): the command
modules import their services inside the commands, so building this tree stays cheap and
each command loads only what it uses. ``tests/cli/test_cli_imports.py`` holds the line.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ams.cli import (
    apikey_cmd,
    audit_cmd,
    backup_cmd,
    certs_cmd,
    db_cmd,
    device_cmd,
    directory_cmd,
    password_cmd,
    regkey_cmd,
    security_cmd,
    snapshot_cmd,
    user_cmd,
)
from ams.cli._runner import DebugOption, run_app, version_callback
from ams.cli.init_cmd import init
from ams.cli.serve_cmd import serve
from ams.cli.status_cmd import status

app = typer.Typer(
    name="ams",
    help="AMS, the Access Manager Service: device administrator passwords and their recovery.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
)


@app.callback()
def root(
    debug: DebugOption = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=version_callback("ams"), is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    # run_app reads --debug from the arguments before parsing, so it covers usage errors too.
    del debug, version


app.command("init")(init)
app.command("status")(status)
app.command("serve")(serve)
app.add_typer(security_cmd.app, name="security")
app.add_typer(apikey_cmd.app, name="apikey")
app.add_typer(audit_cmd.app, name="audit")
app.add_typer(db_cmd.app, name="db")
app.add_typer(backup_cmd.app, name="backup")
app.add_typer(certs_cmd.app, name="certs")
app.add_typer(regkey_cmd.app, name="regkey")
app.add_typer(device_cmd.app, name="device")
app.add_typer(password_cmd.app, name="password")
app.add_typer(directory_cmd.app, name="directory")
app.add_typer(snapshot_cmd.app, name="snapshot")
app.add_typer(user_cmd.app, name="user")


def run(argv: list[str] | None = None) -> int:
    """Run ``ams`` with ``argv``; return the exit status instead of exiting."""
    return run_app(app, "ams", list(sys.argv[1:] if argv is None else argv))


def main() -> None:
    sys.exit(run())
