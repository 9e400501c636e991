"""A full disk (a small tmpfs) and an unwritable destination (a tmpfs mounted read-only: root
ignores modes) during backup create, snapshot create and restore: a clear error, nothing
changed, nothing left behind. Needs root (mount); CI runs as root."""

from __future__ import annotations

# ruff: noqa: F811 - the fixtures imported from faultfixtures are requested by name below
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import crashlib
import figures
import pytest
from faultfixtures import fault_settings, forks, template  # noqa: F401 - fixtures

from conftest import tree_digest


class Mounts:
    def __init__(self) -> None:
        self.points: list[Path] = []

    def tmpfs(self, where: Path, size: str, *, read_only: bool = False) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        options = f"size={size},mode=0700" + (",ro" if read_only else "")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs root with CAP_SYS_ADMIN")
        self.points.append(where)
        return where

    def read_only(self, where: Path) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)

    def release(self) -> None:
        for where in reversed(self.points):
            subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def mounts() -> Iterator[Mounts]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small or read-only file system needs root (CI runs as root)")
    made = Mounts()
    try:
        yield made
    finally:
        made.release()


def _copy(template: dict[str, Any], root: Path) -> tuple[Path, dict[str, Any]]:
    home = crashlib.copy_home(template, root)
    return home, crashlib.relocate(template, home)


def _rows(home: Path) -> dict[str, list[Any]]:
    """What must not change: devices, passwords, certificates, entries, completed backups and snapshots."""
    conn = sqlite3.connect(f"file:{home / 'data' / 'ams.db'}?mode=ro", uri=True)
    try:
        queries = {
            "devices": "SELECT id, current_version FROM devices ORDER BY id",
            "passwords": "SELECT device_id, version, blob FROM device_passwords ORDER BY id",
            "certificates": "SELECT thumbprint, state FROM certificates ORDER BY thumbprint",
            "entries": "SELECT directory_id, generation, dn FROM directory_objects ORDER BY id",
            "backups": "SELECT id, path FROM backups WHERE status = 'complete' ORDER BY id",
            "snapshots": "SELECT id, sha256 FROM directory_snapshots WHERE status = 'Completed' ORDER BY id",
        }
        return {name: conn.execute(sql).fetchall() for name, sql in queries.items()}
    finally:
        conn.close()


def _refused(done: crashlib.Outcome, *words: str) -> list[str]:
    problems = []
    if done.returncode == 0:
        problems.append("it succeeded")
    if not done.clean_error():
        problems.append(f"no clean error: {done.stderr[-400:]}")
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    if len(lines) != 1 or not any(w in lines[0] for w in words):
        problems.append(f"the error does not say {words}: {done.stderr[-400:]}")
    return problems


def _outside_data(digest: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in digest.items() if not k.startswith("data/")}


def test_backup_create_onto_a_full_or_read_only_destination(
    template: dict[str, Any], forks: crashlib.ForkServer, mounts: Mounts, tmp_path: Path
) -> None:
    home, facts = _copy(template, tmp_path / "home")
    rows, files = _rows(home), _outside_data(tree_digest(home))
    full = mounts.tmpfs(tmp_path / "full", "1m")
    done = forks.run(["backup", "create", "--dest", str(full), "--home", str(home)])
    problems = _refused(done, "space", "full")
    problems += [f"left on the full disk: {n}" for n in os.listdir(full)]
    ro = mounts.tmpfs(tmp_path / "ro", "16m", read_only=True)
    done = forks.run(["backup", "create", "--dest", str(ro), "--home", str(home)])
    problems += _refused(done, "read-only", "not writable", "cannot write")
    if _rows(home) != rows or _outside_data(tree_digest(home)) != files:
        problems.append("the instance changed")
    outcome = "both refused with one line, nothing changed or left"
    figures.record("disk", "backup create onto a full (1 MiB tmpfs) and a read-only destination", 2,
                   outcome if not problems else "; ".join(problems), "-")  # fmt: skip
    assert not problems, problems


def test_snapshot_create_into_a_full_or_read_only_store(
    template: dict[str, Any], forks: crashlib.ForkServer, mounts: Mounts, tmp_path: Path
) -> None:
    home, facts = _copy(template, tmp_path / "home")
    folder = home / "snapshots" / facts["corp"]
    saved = tmp_path / "saved"
    shutil.copytree(folder, saved)
    # Room for the snapshot already there (135 kB), not for a new one of 2,000 entries.
    mounts.tmpfs(folder, "200k")
    for item in saved.iterdir():
        shutil.copy2(item, folder / item.name)
    rows, before = _rows(home), sorted(os.listdir(folder))
    done = forks.run(["snapshot", "create", facts["corp"], "--home", str(home)])
    problems = _refused(done, "space", "full")
    problems += [f"left in the full store: {n}" for n in sorted(os.listdir(folder)) if n not in before]
    mounts.read_only(folder)
    done = forks.run(["snapshot", "create", facts["corp"], "--home", str(home)])
    problems += _refused(done, "read-only", "not writable", "cannot write")
    if _rows(home) != rows:
        problems.append("the instance changed (beyond the failed snapshot's own row)")
    listed = forks.run(["snapshot", "list", facts["corp"], "--json", "--home", str(home)])
    if '"Creating"' in listed.stdout:
        problems.append("a failed snapshot is listed as Creating")
    figures.record("disk", "snapshot create into a full and a read-only snapshot store", 2,
                   "both refused with one line, listed as Failed, nothing left" if not problems
                   else "; ".join(problems), "-")  # fmt: skip
    assert not problems, problems


def test_restore_onto_a_full_or_read_only_file_system(
    template: dict[str, Any], forks: crashlib.ForkServer, mounts: Mounts, tmp_path: Path
) -> None:
    problems: list[str] = []
    # In place, the home on a file system with room for itself and a little more.
    size = sum(p.stat().st_size for p in Path(template["home"]).rglob("*") if p.is_file())
    disk = mounts.tmpfs(tmp_path / "disk", f"{size // 1024 + 3000}k")
    home, facts = _copy(template, disk / "home")
    rows, files = _rows(home), _outside_data(tree_digest(home))
    done = forks.run(["backup", "restore", facts["full_backup"], "--yes", "--home", str(home)])
    problems += _refused(done, "space", "full")
    if _rows(home) != rows or _outside_data(tree_digest(home)) != files:
        problems.append("in place: the instance changed")
    # Into a new home on a small file system, and under a read-only one.
    small = mounts.tmpfs(tmp_path / "small", "2m")
    done = forks.run(["backup", "restore", facts["full_backup"], "--password-stdin", "--yes",
                      "--home", str(small / "new")], stdin=crashlib.RECOVERY + "\n")  # fmt: skip
    problems += _refused(done, "space", "full")
    problems += [f"left on the small disk: {n}" for n in os.listdir(small)]
    ro = mounts.tmpfs(tmp_path / "ro", "64m", read_only=True)
    done = forks.run(["backup", "restore", facts["full_backup"], "--password-stdin", "--yes",
                      "--home", str(ro / "new")], stdin=crashlib.RECOVERY + "\n")  # fmt: skip
    problems += _refused(done, "read-only", "not writable", "cannot write", "cannot create")
    outcome = "all refused with one line, nothing changed or left"
    figures.record("disk", "restore in place on a full disk, into a new home on a full and a read-only one",
                   3, outcome if not problems else "; ".join(problems), "-")  # fmt: skip
    assert not problems, problems
