"""End to end with the real commands and a real `ams serve`: losing the service key and recovering."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import RECOVERY_PASSWORD, run_ams
from server import Server

NEW_RECOVERY = "Harbor-Cinnamon-Glacier-5530"


def _status(home: Path) -> dict:
    result = run_ams("status", "--json", home=home)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_lose_the_service_key_and_recover_with_the_recovery_password(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init = run_ams("init", "--recovery-password-stdin", "--json", home=home, input=RECOVERY_PASSWORD + "\n")
    assert init.returncode == 0, init.stderr
    status = _status(home)
    fingerprint = status["master_key"]["fingerprint"]
    assert status["master_key"]["state"] == "unlocked"
    assert status["database"] == {
        **status["database"],
        "engine": "sqlite",
        "revision": status["database"]["head"],
    }
    assert status["service"] == {"running": False, "pid": None}
    first_set_at = status["recovery_password_set_at"]

    new = run_ams(
        "security", "recovery-password", "set", "--password-stdin", home=home, input=NEW_RECOVERY + "\n"
    )
    assert new.returncode == 0, new.stderr
    assert _status(home)["recovery_password_set_at"] > first_set_at

    key = run_ams("apikey", "create", "--name", "ops", "--role", "admin", "--json", home=home)
    assert key.returncode == 0, key.stderr
    token = json.loads(key.stdout)["token"]

    (home / "keys" / "service.key").unlink()
    locked = _status(home)
    assert locked["master_key"]["state"] == "locked"
    assert locked["master_key"]["fingerprint"] == fingerprint

    with Server(home) as server, server.client(token) as api:
        assert api.get("/healthz").json()["status"] == "degraded"
        refused = api.post("/api/v1/apikeys", json={"name": "x"})
        assert refused.status_code == 503
        assert "master key locked: run `ams security unlock`" in refused.json()["message"]
        assert _status(home)["service"]["running"] is True

        # The old recovery password no longer opens anything.
        old = run_ams("security", "unlock", "--password-stdin", home=home, input=RECOVERY_PASSWORD + "\n")
        assert old.returncode == 31 and "wrong" in old.stderr
        assert not (home / "keys" / "service.key").exists()

        unlocked = run_ams("security", "unlock", "--password-stdin", home=home, input=NEW_RECOVERY + "\n")
        assert unlocked.returncode == 0, unlocked.stderr
        # The running service picks the new service key up without a restart.
        assert api.post("/api/v1/apikeys", json={"name": "after-unlock"}).status_code == 201
        assert api.get("/healthz").json()["status"] == "ok"

    after = _status(home)
    assert after["master_key"] == {**after["master_key"], "state": "unlocked", "fingerprint": fingerprint}
    for secret in (RECOVERY_PASSWORD, NEW_RECOVERY):
        assert secret not in server.log.read_text()
