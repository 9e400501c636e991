"""What every command shares: the --home and --json options, output, secret input.

Imported by every command module, so by every ``ams`` start: it stays cheap, and the
instance (SQLAlchemy, the keyring) is imported only when a command opens one.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from ams.errors import BadInput
from ams.home import Home, resolve_home

if TYPE_CHECKING:
    from ams.instance import Instance

__all__ = [
    "HomeOption",
    "JsonOption",
    "PasswordStdinOption",
    "actor",
    "console",
    "emit_json",
    "note",
    "opened",
    "read_secret",
    "when",
]

console = Console(highlight=False, soft_wrap=True)

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="The instance folder (default: $AMS_HOME).", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
PasswordStdinOption = Annotated[
    bool,
    typer.Option("--password-stdin", help="Read the password from the first line of standard input."),
]


def home_of(option: Path | None) -> Home:
    return resolve_home(option)


@contextlib.contextmanager
def opened(option: Path | None) -> Iterator[Instance]:
    """Open the instance named by --home / AMS_HOME for the length of a command."""
    from ams.instance import open_instance

    home = resolve_home(option)
    finish_interrupted_restore(home)
    instance = open_instance(home)
    try:
        yield instance
    finally:
        instance.close()


def finish_interrupted_restore(home: Home) -> None:
    """Before anything opens the instance, finish or undo a restore that a crash interrupted.

    Cheap when there is none (one stat); a restore still at work holds the service lock and
    is left alone (ams.backup.restore.resolve_interrupted).
    """
    if not (home.root / ".restore").exists():
        return
    from ams.backup.restore import resolve_interrupted

    action = resolve_interrupted(home, actor=actor())
    if action:
        note(f"note: a restore that was interrupted has been {action} (event 1506)")


def actor() -> str:
    """Who runs this command, for the audit trail."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid-{os.getuid()}"


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=_default) + "\n")


def note(text: str) -> None:
    """A line beside the output (notes, warnings): on stderr, so stdout stays the data."""
    sys.stderr.write(text + "\n")


def when(value: datetime | None, *, seconds: bool = True) -> str:
    """A time in a table or a listing (UTC, as stored); ``-`` for none."""
    if value is None:
        return "-"
    return value.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def read_secret(what: str, *, from_stdin: bool, confirm: bool = False, allow_empty: bool = False) -> str:
    """A secret from stdin (``--password-stdin``) or typed at the terminal; never an argument.

    ``allow_empty``: an empty secret is a real answer (a PFX exported without a password,
    as ``openssl pkcs12 -export -passout pass:`` and Windows write it): an empty first line,
    or Enter at the prompt. Standard input with no line at all is still refused.
    """
    if from_stdin:
        line = sys.stdin.readline()
        secret = line.rstrip("\r\n")
        if not line or (not secret and not allow_empty):
            empty = " (an empty line for none)" if allow_empty else ""
            raise BadInput(f"no {what} on standard input: send it as the first line{empty}")
        return secret
    if not sys.stdin.isatty():
        raise BadInput(
            f"no terminal to type the {what} on: pass --password-stdin and send it on standard input"
        )
    label = what[:1].upper() + what[1:]  # "PFX password", not "Pfx password"
    secret = getpass.getpass(f"{label}{' (Enter for none)' if allow_empty else ''}: ")
    if not secret and not allow_empty:
        raise BadInput(f"no {what} was typed")
    if confirm and getpass.getpass(f"{label} again: ") != secret:
        raise BadInput(f"the two {what}s differ; nothing was changed")
    return secret
