"""End to end with the real commands and a real `ams serve`: back up online, the schedule in the
service, restore refused while it runs, restore after, and a new machine with the recovery password."""

from __future__ import annotations

import json
import time
from pathlib import Path

from conftest import RECOVERY_PASSWORD, run_ams, tree_digest
from server import Server


def _json(result) -> object:  # type: ignore[no-untyped-def]
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_backup_online_schedule_in_serve_and_restore(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _json(run_ams("init", "--recovery-password-stdin", "--json", home=home, input=RECOVERY_PASSWORD + "\n"))
    token = _json(run_ams("apikey", "create", "--name", "ops", "--role", "admin", "--json", home=home))[
        "token"
    ]  # type: ignore[index]
    (home / "config" / "scripts" / "hook.sh").write_text("echo v1\n")
    schedule = _json(
        run_ams("backup", "schedule", "set", "--every", "5m", "--keep-last", "3", "--json", home=home)
    )
    assert schedule["every"] == "5m" and schedule["keep_last"] == 3  # type: ignore[index]

    # Ten minutes later (for the service's clock): the scheduled run is due as it starts.
    with Server(home, env={"AMS_CLOCK_OFFSET_SECONDS": "600"}) as server, server.client(token) as api:
        online = _json(run_ams("backup", "create", "--json", home=home))
        path = Path(online["path"])  # type: ignore[index]
        assert path.is_file()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            listed = _json(run_ams("backup", "list", "--json", home=home))
            if any(e["kind"] == "scheduled" for e in listed):  # type: ignore[union-attr]
                break
            time.sleep(0.5)
        scheduled = [e for e in listed if e["kind"] == "scheduled"]  # type: ignore[union-attr]
        assert scheduled and scheduled[0]["verified_ok"] is True, listed
        metrics = api.get("/metrics").text
        assert "ams_backup_last_success_timestamp_seconds" in metrics
        assert api.get("/api/v1/backups/status").json()["last_success_at"]
        made = api.post("/api/v1/backups")
        assert made.status_code == 201 and Path(made.json()["path"]).is_file()

        refused = run_ams("backup", "restore", str(path), "--yes", home=home)
        assert refused.returncode == 25
        assert f"pid {server.proc.pid}" in refused.stderr and "Traceback" not in refused.stderr

    (home / "config" / "scripts" / "hook.sh").write_text("echo v2\n")
    verified = _json(run_ams("backup", "verify", str(path), "--json", home=home))
    assert verified["ok"] and verified["key_from"] == "instance"  # type: ignore[index]
    no_yes = run_ams("backup", "restore", str(path), home=home)
    assert no_yes.returncode == 12 and "--yes" in no_yes.stderr
    restored = _json(run_ams("backup", "restore", str(path), "--yes", "--json", home=home))
    assert restored["pre_restore_backup"] and restored["unlocked_with"] == "instance"  # type: ignore[index]
    assert (home / "config" / "scripts" / "hook.sh").read_text() == "echo v1\n"
    status = _json(run_ams("status", "--json", home=home))
    assert status["master_key"]["state"] == "unlocked"  # type: ignore[index]
    assert status["backup"]["last_success_at"] and status["backup"]["next_scheduled"]  # type: ignore[index]
    kinds = [e["kind"] for e in _json(run_ams("backup", "list", "--json", home=home))]  # type: ignore[union-attr]
    assert "pre-restore" in kinds

    # A new machine: no instance, only the file and the recovery password.
    other = tmp_path / "elsewhere"
    offline = _json(
        run_ams(
            "backup",
            "verify",
            str(path),
            "--deep",
            "--password-stdin",
            "--json",
            input=RECOVERY_PASSWORD + "\n",
        )
    )
    assert offline["key_from"] == "recovery password" and "restore drill" in offline["checks"]  # type: ignore[index]
    wrong = run_ams(
        "backup", "restore", str(path), "--password-stdin", home=other, input="Not-The-Password-1234\n"
    )
    assert wrong.returncode == 31 and "set at" in wrong.stderr
    assert not other.exists()
    _json(
        run_ams(
            "backup",
            "restore",
            str(path),
            "--password-stdin",
            "--json",
            home=other,
            input=RECOVERY_PASSWORD + "\n",
        )
    )
    moved = _json(run_ams("status", "--json", home=other))
    assert moved["master_key"]["state"] == "unlocked" and moved["instance_id"] == status["instance_id"]  # type: ignore[index]
    assert (other / "config" / "scripts" / "hook.sh").read_text() == "echo v1\n"

    # A damaged file: one clear line, the exit status of backup_invalid, nothing changed.
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged = tmp_path / "damaged.amsbak"
    damaged.write_bytes(bytes(data))
    before = tree_digest(home)
    bad = run_ams("backup", "restore", str(damaged), "--yes", home=home)
    assert bad.returncode == 80 and "payload" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert tree_digest(home) == before
