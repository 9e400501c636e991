"""ams.home.atomic_write: the one way AMS writes a file that must never be seen half-written."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from ams.home import atomic_write


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_it_replaces_with_the_mode_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "f"
    assert atomic_write(path, b"one") is True
    assert path.read_bytes() == b"one" and _mode(path) == 0o600
    assert atomic_write(path, b"two", 0o640) is True
    assert path.read_bytes() == b"two" and _mode(path) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_without_replace_an_existing_file_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "f"
    assert atomic_write(path, b"first", replace=False) is True
    assert atomic_write(path, b"second", replace=False) is False
    assert path.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_without_hard_links_it_still_refuses_to_replace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(*_args: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "f"
    assert atomic_write(path, b"first", replace=False) is True
    assert atomic_write(path, b"second", replace=False) is False
    assert path.read_bytes() == b"first" and _mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f"
    atomic_write(path, b"old")

    def full(*_args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match="No space"):
        atomic_write(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]
