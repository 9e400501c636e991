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
    """Before anything opens the instance, finish or undo a restore that a crash interrupted,
    and remove what a crashed backup left in ``backups/`` (ams.backup.leftovers).

    Cheap when there is none (one stat, one listing); a restore still at work holds the
    service lock and is left alone (ams.backup.restore.resolve_interrupted), a backup still
    at work holds a lock on its scratch files.
    """
    from ams.backup.leftovers import clean_home

    if (home.root / ".restore").exists():
        from ams.backup.restore import resolve_interrupted

        action = resolve_interrupted(home, actor=actor())
        if action:
            note(f"note: a restore that was interrupted has been {action} (event 1506)")
    removed = clean_home(home)  # what a crashed backup left in backups/
    if removed:
        note(f"note: removed what a crashed backup left in {home.backups_dir}: {', '.join(removed)}")


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


def read_secret(what: str, *, from_stdin: bool, confirm: bool = False) -> str:
    """A secret from stdin (``--password-stdin``) or typed at the terminal; never an argument."""
    if from_stdin:
        line = sys.stdin.readline()
        secret = line.rstrip("\r\n")
        if not secret:
            raise BadInput(f"no {what} on standard input: send it as the first line")
        return secret
    if not sys.stdin.isatty():
        raise BadInput(
            f"no terminal to type the {what} on: pass --password-stdin and send it on standard input"
        )
    secret = getpass.getpass(f"{what.capitalize()}: ")
    if not secret:
        raise BadInput(f"no {what} was typed")
    if confirm and getpass.getpass(f"{what.capitalize()} again: ") != secret:
        raise BadInput(f"the two {what}s differ; nothing was changed")
    return secret
