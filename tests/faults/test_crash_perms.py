"""Permissions: whatever the umask, what AMS writes is 0600 and its folders 0700; a home or a
key file that others can read is a warning in `ams status`."""

# ruff: noqa: F811 - the fixture imported from faultfixtures is requested by name below
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import crashlib
import figures
import pytest
from faultfixtures import forks  # noqa: F401 - a fixture

from conftest import RECOVERY_PASSWORD

_FORKS: list[crashlib.ForkServer] = []


@pytest.fixture(autouse=True)
def _through(forks: crashlib.ForkServer) -> None:
    _FORKS[:] = [forks]


def _ams(umask: int, *args: str, stdin: str | None = None) -> crashlib.Outcome:
    """`ams ARGS` under ``umask`` (the fork server's child runs the `ams` entry point)."""
    return _FORKS[0].run(list(args), stdin=stdin, umask=umask)


def _loose(root: Path) -> list[str]:
    """Every file not exactly 0600 and every folder not exactly 0700 under root (root too)."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        want = 0o700 if stat.S_ISDIR(mode) else 0o600
        if not stat.S_ISLNK(mode) and stat.S_IMODE(mode) != want:
            found.append(f"{path.relative_to(root.parent)} {stat.S_IMODE(mode):04o}")
    return found


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_every_file_is_private_whatever_the_umask(umask: int, tmp_path: Path) -> None:
    home = tmp_path / "home"
    steps = [
        ("init", "--recovery-password-stdin"),
        ("regkey", "create", "--name", "fleet"),
        ("directory", "create", "corp.example.com"),
        ("backup", "create"),
    ]
    for step in steps:
        stdin = RECOVERY_PASSWORD + "\n" if "--recovery-password-stdin" in step else None
        done = _ams(umask, *step, "--home", str(home), stdin=stdin)
        assert done.returncode == 0, (step, done.stderr)
    listed = json.loads(_ams(umask, "directory", "list", "--json", "--home", str(home)).stdout)
    taken = _ams(umask, "snapshot", "create", listed[0]["id"], "--home", str(home))
    assert taken.returncode == 0, taken.stderr
    archive = next((home / "backups").glob("*.amsbak"))
    restored = tmp_path / "restored"
    restore = ("backup", "restore", str(archive), "--password-stdin", "--yes", "--home", str(restored))
    done = _ams(umask, *restore, stdin=RECOVERY_PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    loose = _loose(home) + _loose(restored)
    checked = sum(1 for root in (home, restored) for _ in root.rglob("*"))
    figures.record(
        "permissions",
        f"files and folders written under umask {umask:03o} (init, backup, snapshot, restore)",
        checked,
        "all 0600/0700" if not loose else f"{len(loose)} too open: {', '.join(loose[:5])}",
        "-",
    )
    assert not loose
    status = _ams(umask, "status", "--json", "--home", str(home))
    assert json.loads(status.stdout)["warnings"] == []


def test_status_warns_of_a_home_or_key_others_can_read(tmp_path: Path) -> None:
    home = tmp_path / "home"
    made = _ams(
        0o077, "init", "--recovery-password-stdin", "--home", str(home), stdin=RECOVERY_PASSWORD + "\n"
    )
    assert made.returncode == 0, made.stderr
    os.chmod(home, 0o755)
    os.chmod(home / "keys" / "service.key", 0o644)
    shown = _ams(0o077, "status", "--home", str(home))
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    assert f"warning: {home} can be opened by other users (mode 0755): run `chmod 700 {home}`" in text
    assert "service.key can be read by other users (mode 0644)" in text
    data = json.loads(_ams(0o077, "status", "--json", "--home", str(home)).stdout)
    assert len(data["warnings"]) == 2
    figures.record(
        "permissions", "a home and a key file others can read", 2, "both warned by ams status", "-"
    )
