"""The ``ams`` entry point: the command tree and the one place errors become exit statuses."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated

import typer

from ams import __version__
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
)
from ams.cli.init_cmd import init
from ams.cli.serve_cmd import serve
from ams.cli.status_cmd import status
from ams.errors import AMSError

app = typer.Typer(
    name="ams",
    help="AMS, the Access Manager Service: device administrator passwords and their recovery.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
)

_debug = False


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ams {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    global _debug
    _debug = debug


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


def _fail(message: str, status: int) -> int:
    sys.stderr.write(f"error: {message}\n")
    return status


def run(argv: list[str] | None = None) -> int:
    """Run ``ams`` with ``argv``; return the exit status instead of exiting."""
    global _debug
    args = list(sys.argv[1:] if argv is None else argv)
    _debug = os.environ.get("AMS_DEBUG", "") not in ("", "0") or "--debug" in args
    command = typer.main.get_command(app)
    try:
        result = command.main(args=args, prog_name="ams", standalone_mode=False)
    except AMSError as exc:
        if _debug:
            traceback.print_exc()
        return _fail(exc.message, exc.exit_status)
    except typer.TyperException as exc:
        # Typer's (vendored click) usage errors: unknown option or command, bad value.
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            # `ams` or `ams certs` alone: the help, as the user asked for it.
            sys.stdout.write(ctx.get_help() + "\n")
            return 0
        where = ctx.command_path if ctx is not None else "ams"
        message = exc.format_message().replace("\n", " ")
        status = getattr(exc, "exit_code", 2)
        return _fail(f"{message} (see `{where} --help`)" if status == 2 else message, status)
    except (typer.Abort, KeyboardInterrupt, EOFError):
        return _fail("interrupted; nothing more was done", 130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback by default
        if _debug:
            traceback.print_exc()
        return _fail(
            f"internal error ({type(exc).__name__}); run again with --debug to see where, and report it",
            1,
        )
    return result if isinstance(result, int) else 0


def main() -> None:
    sys.exit(run())
