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
from collections.abc import Collection, Iterable, Iterator, Sequence
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
    "print_table",
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


def print_table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], *, ids: Collection[str] = ("id",)
) -> None:
    """A table on stdout in which identifiers are never cut, whatever the terminal's width.

    ``ids`` names the columns that hold identifiers (what a user copies into the next
    command): they keep their whole width and never wrap. The other columns give up width
    first and wrap, at word boundaries where they can. When the identifiers and the longest
    words leave no room, each row is one plain line, as wide as it needs (the terminal
    wraps it; nothing is cut).
    """
    from rich import box
    from rich.table import Table

    cells = [list(r) for r in rows]
    columns = list(zip(headers, *cells, strict=True)) if cells else [(h,) for h in headers]
    natural = [max(len(line) for text in col for line in (text.splitlines() or [""])) for col in columns]
    longest_word = [max(map(len, " ".join(col).split()), default=1) for col in columns]
    room = console.width - (len(headers) - 1)  # one space between columns
    # Other columns wrap at words, and fold words longer than ``cap``: the cap comes down
    # (12 to 4) until the table fits, else it is printed as plain lines.
    for cap in range(12, 3, -1):
        smallest = [
            natural[i] if headers[i] in ids else min(natural[i], max(1, min(cap, longest_word[i])))
            for i in range(len(headers))
        ]
        if sum(smallest) <= room:
            break
    else:
        _print_lines(headers, cells, natural)
        return
    widths = list(smallest)
    spare = room - sum(widths)
    for i in sorted(range(len(widths)), key=lambda i: natural[i] - smallest[i]):
        # The columns that want the least extra get theirs first, the rest share what is left.
        wanting = [j for j in range(len(widths)) if natural[j] > widths[j]]
        if i not in wanting:
            continue
        share = min(natural[i] - widths[i], spare // max(1, len(wanting)))
        widths[i] += share
        spare -= share
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 0), show_edge=False, collapse_padding=True)
    for header, width in zip(headers, widths, strict=True):
        if header in ids:
            table.add_column(header, width=width, no_wrap=True, overflow="ignore")
        else:
            table.add_column(header, width=width, overflow="fold")
    for row in cells:
        table.add_row(*row)
    console.print(table)


def _print_lines(headers: Sequence[str], rows: list[list[str]], widths: list[int]) -> None:
    """One plain line per row, columns at their natural width: wider than the terminal,
    which wraps it, but nothing is cut and each row stays one line for grep and copy."""
    for row in [list(headers), *rows]:
        cells = [" ".join(text.split("\n")).ljust(width) for text, width in zip(row, widths, strict=True)]
        sys.stdout.write("  ".join(cells).rstrip() + "\n")
    sys.stdout.flush()


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
