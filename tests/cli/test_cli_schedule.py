"""`ams backup schedule set`: retention rules combine as documented, and a destination is a
folder that exists and can be written, unless --create (issue 17, item 7)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ams.errors import BadInput, NotWritable
from ams.instance import Instance
from conftest import run_ams, tree_digest


def _set(home: Path, *args: str) -> dict:  # type: ignore[type-arg]
    done = run_ams("backup", "schedule", "set", *args, "--json", home=home)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _retention(view: dict) -> tuple:  # type: ignore[type-arg]
    return tuple(view[k] for k in ("retain_days", "keep_last", "keep_daily", "keep_weekly", "keep_monthly"))


def test_retention_options_combine_and_what_is_not_given_stays(instance: Instance) -> None:
    home = instance.home.root
    view = _set(home, "--keep-daily", "7", "--keep-weekly", "4")
    # The default age rule stays beside the new count rules, and the description says both.
    assert _retention(view) == (14, None, 7, 4, None)
    assert view["description"] == "daily at 02:00 UTC; retain 14 days and keep 7 daily, 4 weekly"

    view = _set(home, "--keep-last", "2")  # the other keep-* values stay
    assert _retention(view) == (14, 2, 7, 4, None)
    view = _set(home, "--retain-days", "0", "--keep-monthly", "12")  # both in one command
    assert _retention(view) == (0, 2, 7, 4, 12)
    assert view["description"] == "daily at 02:00 UTC; keep 2 last, 7 daily, 4 weekly, 12 monthly"
    view = _set(home, "--retain-days", "30")
    assert _retention(view) == (30, 2, 7, 4, 12)
    view = _set(home, "--keep-last", "0", "--keep-daily", "0", "--keep-weekly", "0", "--keep-monthly", "0")
    assert _retention(view) == (30, None, None, None, None)
    assert view["description"] == "daily at 02:00 UTC; retain 30 days"

    shown = run_ams("backup", "schedule", "show", home=home)
    assert "retain 30 days" in shown.stdout


def test_a_destination_must_exist_and_be_a_writable_folder(instance: Instance, tmp_path: Path) -> None:
    home = instance.home.root
    before = _set(home)
    outside = tmp_path / "outside"
    outside.mkdir()
    a_file = outside / "a-file"
    a_file.write_text("not a folder\n")
    missing = outside / "nowhere" / "backups"
    digest = tree_digest(outside)
    for dest, words in (
        (missing, "does not exist"),
        (a_file, "is a file"),
        (a_file / "below", "is a file"),
    ):
        refused = run_ams("backup", "schedule", "set", "--dest", str(dest), home=home)
        assert refused.returncode == BadInput.exit_status, refused.stderr
        assert words in refused.stderr and refused.stderr.count("\n") == 1
        assert "Traceback" not in refused.stderr
    assert not missing.exists() and tree_digest(outside) == digest
    assert _set(home)["destination"] == before["destination"]

    made = _set(home, "--dest", str(missing), "--create")
    assert made["destination"] == str(missing)
    assert missing.is_dir() and (missing.stat().st_mode & 0o777) == 0o700

    if os.geteuid() == 0:
        pytest.skip("root writes into any folder: the unwritable case needs an ordinary user")
    locked = outside / "locked"
    locked.mkdir(mode=0o500)
    refused = run_ams("backup", "schedule", "set", "--dest", str(locked), home=home)
    assert refused.returncode == NotWritable.exit_status and "cannot be written" in refused.stderr
    assert _set(home)["destination"] == str(missing)
