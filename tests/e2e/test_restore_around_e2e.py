"""Issue 17, items 1-4, end to end with the real `ams` command on real homes: what a restore
does around the data. It keeps or announces the recovery password in force, never touches
the backups of the home it was copied from, leaves the catalog true to the folders, and
what a crashed restore leaves is cleaned by the next command."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import RECOVERY_PASSWORD, run_ams
from server import Server

NEW_PASSWORD = "Marmalade-Quarry-Beacon-8812"


def _ok(*args: str, home: Path | None = None, input: str | None = None) -> Any:
    result = run_ams(*args, "--json", home=home, input=input)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _init(home: Path) -> dict[str, Any]:
    made: dict[str, Any] = _ok("init", "--recovery-password-stdin", home=home, input=RECOVERY_PASSWORD + "\n")
    return made


def _events(home: Path, event: int) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = _ok("audit", "list", "--event", str(event), home=home)
    return listed


def test_an_older_backup_keeps_the_newer_recovery_password_or_says_which_is_in_force(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _init(home)
    old = _ok("backup", "create", home=home)
    assert old["recovery_password_set_at"]
    time.sleep(0.01)
    # The old recovery password leaked: the administrator sets a new one.
    newer = _ok(
        "security", "recovery-password", "set", "--password-stdin", home=home, input=NEW_PASSWORD + "\n"
    )
    newer_at = newer["recovery_password_set_at"]
    assert newer_at != old["recovery_password_set_at"]

    # Restoring the older backup over the same instance keeps the password set last.
    restored = _ok("backup", "restore", old["path"], "--yes", home=home)
    status = _ok("status", home=home)
    assert status["recovery_password_set_at"] == newer_at and status["recovery_password_notice"] is None
    assert restored["recovery_password"]["outcome"] == "kept"
    assert restored["recovery_password"]["set_at"] == newer_at
    # The service key is lost: only the NEW password unlocks, the leaked one does not.
    (home / "keys" / "service.key").unlink()
    leaked = run_ams("security", "unlock", "--password-stdin", home=home, input=RECOVERY_PASSWORD + "\n")
    assert leaked.returncode == 31, leaked.stderr
    unlocked = _ok("security", "unlock", "--password-stdin", home=home, input=NEW_PASSWORD + "\n")
    assert unlocked["state"] == "unlocked"

    # Into a new home there is no newer one: the backup's is in force, and everything says so.
    other = tmp_path / "other"
    text = run_ams(
        "backup", "restore", old["path"], "--password-stdin", home=other, input=RECOVERY_PASSWORD + "\n"
    )
    assert text.returncode == 0, text.stderr
    notice = (
        f"the recovery password is now the one in use on {old['recovery_password_set_at']}; "
        "set a new one with `ams security recovery-password set`"
    )
    assert notice in " ".join(text.stdout.split())
    [event] = _events(other, 1503)
    assert event["details"]["recovery_password"]["outcome"] == "from-backup"
    assert event["details"]["recovery_password"]["notice"] == notice
    shown = run_ams("status", home=other)
    assert notice in " ".join(shown.stdout.split())
    # Once a new one is set, the notice has done its work.
    _ok("security", "recovery-password", "set", "--password-stdin", home=other, input=NEW_PASSWORD + "\n")
    assert _ok("status", home=other)["recovery_password_notice"] is None


def test_a_copy_restored_from_another_home_never_prunes_that_homes_backups(tmp_path: Path) -> None:
    shared = tmp_path / "shared-destination"
    shared.mkdir(mode=0o700)
    original, copy = tmp_path / "original", tmp_path / "copy"
    _init(original)
    _ok(
        "backup", "schedule", "set", "--dest", str(shared), "--every", "5m", "--retain-days", "0",
        "--keep-last", "1", home=original,
    )  # fmt: skip
    first = _ok("backup", "create", home=original)
    second = _ok("backup", "create", home=original)
    assert Path(first["path"]).parent == shared == Path(second["path"]).parent

    # The drill: restore the original's backup into a new home on the same machine.
    restored = run_ams(
        "backup", "restore", second["path"], "--password-stdin", home=copy, input=RECOVERY_PASSWORD + "\n"
    )
    assert restored.returncode == 0, restored.stderr
    said = " ".join(restored.stdout.split())
    status_while_paused = run_ams("status", home=copy).stdout
    listed = {e["backup_id"]: e for e in _ok("backup", "list", home=copy)}

    # While paused, the copy's own backups (a pre-restore one here) stay in its own folder.
    again = _ok("backup", "restore", second["path"], "--yes", home=copy)
    assert Path(again["pre_restore_backup"]).parent == copy / "backups"

    # The administrator confirms the shared destination; the copy's scheduled run (keep 1)
    # prunes the copy's own older backup, and none of the original's.
    assert _ok("backup", "schedule", "set", "--dest", str(shared), home=copy)["status"]["paused"] is None
    own = _ok("backup", "create", home=copy)
    assert Path(own["path"]).parent == shared
    with Server(copy, env={"AMS_CLOCK_OFFSET_SECONDS": "900"}):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(e["kind"] == "scheduled" for e in _ok("backup", "list", home=copy)):
                break
            time.sleep(0.3)
        else:
            raise AssertionError("no scheduled backup in the copy")
        time.sleep(0.5)  # the run prunes right after it records its backup
    pruned = {e["target"] for e in _events(copy, 1504)}
    assert own["backup_id"] in pruned and not Path(own["path"]).exists()
    assert Path(first["path"]).is_file() and Path(second["path"]).is_file()
    assert not pruned & {first["backup_id"], second["backup_id"]}
    # The restore said how to go on, and `ams status` showed the pause.
    assert "Scheduled backups are paused" in said and "`ams backup schedule set --dest DIR`" in said
    assert str(shared) in said and "PAUSED" in status_while_paused
    assert listed[first["backup_id"]]["written_here"] is False


def test_the_catalog_is_reconciled_with_the_folder_after_a_restore_and_on_demand(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _init(home)
    made = [_ok("backup", "create", home=home) for _ in range(2)]
    restored = _ok("backup", "restore", made[0]["path"], "--yes", home=home)
    listed = {e["backup_id"]: e for e in _ok("backup", "list", home=home)}
    later = made[1]  # made after the restored one: still listed, and this home's
    assert later["backup_id"] in listed and listed[later["backup_id"]]["path"] == later["path"]
    assert listed[later["backup_id"]]["written_here"] is True
    assert set(restored["catalog"]["added"]) == {m["backup_id"] for m in made}

    # On demand: by the headers, not by the names.
    folder = home / "backups"
    moved = folder / "renamed-by-hand.bin"
    Path(made[1]["path"]).rename(moved)
    Path(made[0]["path"]).unlink()
    (folder / "ams-20260101T000000Z-manual-0123456789abcdef.amsbak").write_bytes(b"not a backup" * 100)
    rescan = _ok("backup", "list", "--rescan", home=home)
    assert rescan["rescan"]["moved"] == [made[1]["backup_id"]]
    assert rescan["rescan"]["removed"] == [made[0]["backup_id"]]
    assert rescan["rescan"]["unreadable"] == [
        str(folder / "ams-20260101T000000Z-manual-0123456789abcdef.amsbak")
    ]
    entries = {e["backup_id"]: e for e in rescan["backups"]}
    assert made[0]["backup_id"] not in entries and entries[made[1]["backup_id"]]["path"] == str(moved)
    [event] = _events(home, 1507)[-1:]
    assert event["details"]["moved"] == [made[1]["backup_id"]]


_CRASH = """
import os, sys
import ams.backup.create as create
def crash(*args, **kwargs):
    os._exit(9)  # the power goes while the pre-restore backup reads the database
create.open_image = crash
from ams.cli.main import main
sys.argv = ["ams", *sys.argv[1:]]
main()
"""


def test_what_a_crashed_restore_leaves_is_cleaned_by_the_next_command(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _init(home)
    made = _ok("backup", "create", home=home)
    died = subprocess.run(
        [sys.executable, "-c", _CRASH, "backup", "restore", made["path"], "--yes", "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert died.returncode == 9, died.stderr
    left = [p.name for p in (home / "backups").iterdir() if p.name.startswith(".")]
    assert left and all(n.startswith(".bk_") and n.endswith(".work") for n in left)
    assert (home / ".restore").is_dir()

    listed = run_ams("backup", "list", home=home)
    assert listed.returncode == 0, listed.stderr
    assert "rolled back" in listed.stderr
    assert not (home / ".restore").exists()
    assert [p.name for p in (home / "backups").iterdir() if p.name.startswith(".")] == []
    [event] = _events(home, 1509)
    assert event["details"]["names"] == left
