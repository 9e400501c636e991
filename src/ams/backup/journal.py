"""The restore journal: swapping folders so that a crash midway is undone at the next start.

A restore stages the backup in ``$AMS_HOME/.restore/staging/`` and then renames each live
folder (``data``, ``config``, ``snapshots``) to ``.restore/old/<name>`` and each staged one
into place. Before the first rename it writes ``.restore/journal.json`` with state
``swapping``; after the last, state ``committed``. :func:`resume` reads the journal:
``swapping`` is rolled back (every folder returns to where it was) unless every staged
folder is already in place; then, as for ``committed``, the restore is finished (the old
folders are deleted). Renames within one file
system are atomic, and each is followed by an fsync of the folders involved.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ams.home import Home, atomic_write, fsync_dir

__all__ = [
    "SWAPPED",
    "finish",
    "journal_path",
    "note_created_home",
    "resume",
    "rollback",
    "step",
    "swap",
    "work_dir",
]

SWAPPED = ("data", "config", "snapshots")
CREATED_HOME = "created-home"  # in the work folder: the restore made the home folder itself


def work_dir(home: Home) -> Path:
    return home.root / ".restore"


def journal_path(home: Home) -> Path:
    return work_dir(home) / "journal.json"


def _write(home: Home, state: str, items: list[dict[str, Any]], marker: str | None = None) -> None:
    data: dict[str, Any] = {"version": 1, "state": state, "items": items}
    if marker:
        data["marker"] = marker
    atomic_write(journal_path(home), json.dumps(data).encode())


def _rename(src: Path, dst: Path) -> None:
    src.rename(dst)
    fsync_dir(src.parent)
    if dst.parent != src.parent:
        fsync_dir(dst.parent)


def step(home: Home, move: str, name: str) -> None:
    """One rename: ``aside`` (live -> .restore/old/name) or ``in`` (staged -> live)."""
    work = work_dir(home)
    if move == "aside":
        _rename(home.root / name, work / "old" / name)
    else:
        _rename(work / "staging" / name, home.root / name)


def swap(home: Home, db_commit: Callable[[], None] | None = None, marker: str | None = None) -> None:
    """Swap every staged folder in; on an exception the caller calls :func:`rollback`.

    With ``db_commit`` (a restore onto PostgreSQL), the database transaction commits after
    every folder is in, under state ``db-pending`` naming ``marker``: a row that exists in
    the database only once that transaction committed. :func:`resume` looks for it.

    Every live folder is moved aside first, ``data`` first of all, and the staged ones are
    moved in with ``data`` last: in every intermediate state ``data/`` is absent, so no
    ``ams`` command can open a half-swapped instance (they say to run ``ams backup
    restore``, which resumes first).
    """
    work = work_dir(home)
    (work / "old").mkdir(mode=0o700, exist_ok=True)
    had_live = {n: (home.root / n).exists() for n in SWAPPED}
    items = [{"name": n, "had_live": live} for n, live in had_live.items()]
    _write(home, "swapping", items)
    for name, live in had_live.items():
        if live:
            step(home, "aside", name)
    for name in reversed(had_live):
        step(home, "in", name)
    if db_commit is not None:
        _write(home, "db-pending", items, marker)
        db_commit()
        with contextlib.suppress(OSError):  # "db-pending" with the marker present is finished too
            _write(home, "committed", items)
        return
    _write(home, "committed", items)


def _all_in(home: Home, items: list[dict[str, Any]]) -> bool:
    work = work_dir(home)
    return all(
        (home.root / i["name"]).exists() and not (work / "staging" / i["name"]).exists() for i in items
    )


def note_created_home(home: Home) -> None:
    """Record that the restore created the home folder (a rollback then removes it, once empty)."""
    atomic_write(work_dir(home) / CREATED_HOME, b"")


def _remove_created_home(home: Home) -> None:
    """After a rollback: the home folder the restore created goes too, when nothing else was
    put in it (an empty ``keys/`` from staging a key counts as nothing)."""
    with contextlib.suppress(OSError):
        for name in ("keys", "run"):
            folder = home.root / name
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        home.root.rmdir()  # only when empty
        fsync_dir(home.root.parent)


def rollback(home: Home) -> None:
    """Put every folder back as the journal found it, then forget the restore (and what it
    staged: the new service key, the work folder, a home folder it created)."""
    created_home = (work_dir(home) / CREATED_HOME).exists()
    path = journal_path(home)
    if path.exists():
        items = json.loads(path.read_text())["items"]
        work = work_dir(home)
        for item in reversed(items):
            live, old, new = (
                home.root / item["name"],
                work / "old" / item["name"],
                work / "staging" / item["name"],
            )
            if item["had_live"]:
                if old.exists():
                    if live.exists():
                        _rename(live, new) if not new.exists() else shutil.rmtree(live)
                    _rename(old, live)
            elif live.exists() and not new.exists():
                _rename(live, new)
    shutil.rmtree(work_dir(home), ignore_errors=True)
    if home.root.exists():
        fsync_dir(home.root)
        if created_home:
            _remove_created_home(home)


def finish(home: Home) -> None:
    """Forget a restore whose folders are all in place. A new service key it staged and a
    crash kept from its place is put there first: the restored database is wrapped for it."""
    from ams.security.service_key import STAGED_KEY_PREFIX, install_staged_key

    work = work_dir(home)
    if work.is_dir():
        for staged in sorted(work.glob(STAGED_KEY_PREFIX + "*")):
            install_staged_key(staged, home.service_key_file)
    shutil.rmtree(work, ignore_errors=True)
    fsync_dir(home.root)


def resume(home: Home) -> str | None:
    """Resolve a restore a crash interrupted: "rolled back", "finished", or None (nothing to do)."""
    work = work_dir(home)
    if not work.exists():
        return None
    path = journal_path(home)
    state = None
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
            state = data.get("state")
        except (OSError, ValueError):
            state = None
    items = data.get("items", []) if state in ("swapping", "committed", "db-pending") else []
    if state == "db-pending":
        state = "committed" if _database_committed(home, str(data.get("marker", ""))) else "swapping"
        if state == "swapping":
            items = [dict(i, db_pending=True) for i in items]
    if state == "committed" or (state == "swapping" and _all_in(home, items) and not _pending(items)):
        # Every staged folder is in place: the instance could already be opened as restored.
        finish(home)
        return "finished"
    rollback(home)
    return "rolled back"


def _pending(items: list[dict[str, Any]]) -> bool:
    return any(i.get("db_pending") for i in items)


def _database_committed(home: Home, marker: str) -> bool:
    """Whether the restore's database transaction committed (its marker row is there)."""
    from ams.backup.pg import marker_present
    from ams.config import load_settings
    from ams.errors import DatabaseUnreadable

    url = load_settings(home.config_file).database.url
    try:
        return bool(marker) and bool(url) and marker_present(url, marker)
    except Exception as exc:  # noqa: BLE001 - the database is unreachable: decide later
        raise DatabaseUnreadable(
            "a restore onto PostgreSQL was interrupted and the database cannot be reached to see "
            f"whether it committed ({type(exc).__name__}); run the command again once it is reachable"
        ) from None
