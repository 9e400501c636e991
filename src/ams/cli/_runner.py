"""Run a Typer app so that every failure is one ``error:`` line and a stable exit status.

Shared by ``ams`` and ``ams-agent``; the agent runs on devices, so this module imports
nothing but Typer and the error hierarchy.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import Annotated

import typer

from ams import __version__
from ams.errors import AMSError

__all__ = ["DebugOption", "debug_requested", "run_app", "version_callback"]

DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")]


def version_callback(prog_name: str) -> Callable[[bool], None]:
    """The callback of a ``--version`` option: print ``prog_name`` and the version, exit."""

    def show(value: bool) -> None:
        if value:
            typer.echo(f"{prog_name} {__version__}")
            raise typer.Exit()

    return show


def debug_requested(args: list[str]) -> bool:
    """``--debug`` among the arguments, or ``AMS_DEBUG`` set (to anything but 0)."""
    return os.environ.get("AMS_DEBUG", "") not in ("", "0") or "--debug" in args


def _fail(message: str, status: int) -> int:
    sys.stderr.write(f"error: {message}\n")
    return status


def run_app(app: typer.Typer, prog_name: str, args: list[str]) -> int:
    """Run ``app`` with ``args``; return the exit status instead of exiting.

    An AMS error prints its message and exits with its status; a usage error says which
    ``--help`` to read and exits 2; anything unexpected is an internal error (exit 1), with
    the traceback only under ``--debug``.
    """
    debug = debug_requested(args)
    command = typer.main.get_command(app)
    try:
        result = command.main(args=args, prog_name=prog_name, standalone_mode=False)
    except AMSError as exc:
        if debug:
            traceback.print_exc()
        return _fail(exc.message, exc.exit_status)
    except typer.TyperException as exc:
        # Typer's (vendored click) usage errors: unknown option or command, bad value.
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            # A bare command or group (`ams`, `ams certs`): the help, as if it were asked for.
            sys.stdout.write(ctx.get_help() + "\n")
            return 0
        where = ctx.command_path if ctx is not None else prog_name
        message = exc.format_message().replace("\n", " ")
        status = getattr(exc, "exit_code", 2)
        return _fail(f"{message} (see `{where} --help`)" if status == 2 else message, status)
    except (typer.Abort, KeyboardInterrupt, EOFError):
        return _fail("interrupted; nothing more was done", 130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback by default
        if debug:
            traceback.print_exc()
        return _fail(
            f"internal error ({type(exc).__name__}); run again with --debug to see where, and report it", 1
        )
    return result if isinstance(result, int) else 0
