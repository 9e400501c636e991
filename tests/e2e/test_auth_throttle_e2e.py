"""Issue 18 item 3, against a real `ams serve`: a burst of failed authentication (admin API
keys, device tokens, registration keys, SigV4 with an unknown key id) is throttled with
429 + Retry-After and leaves the audit trail and the database file flat; valid credentials
still pass, from the attacker's address and from any other; the burst is on the record
as 1203 events with its counts."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from ams import apikeys
from ams.apikeys import Role
from ams.backup import schedule
from ams.clock import SystemClock
from ams.home import Home
from ams.instance import open_instance
from ams.vault import regkeys
from conftest import RECOVERY_PASSWORD, run_ams
from server import Server

LIMIT = 10  # ams.security.throttle.LIMIT
WINDOW_SECONDS = 300  # ams.security.throttle.WINDOW
BURST = 20  # per kind, once throttled
ELSEWHERE = "127.0.0.2"  # another client address: Linux answers all of 127/8 on loopback


def _json(result: object) -> dict:  # type: ignore[type-arg]
    assert result.returncode == 0, result.stderr  # type: ignore[attr-defined]
    return json.loads(result.stdout)  # type: ignore[attr-defined,no-any-return]


@dataclass
class Env:
    home: Path
    server: Server
    admin: dict[str, str]
    regkey: str
    device_token: str

    @property
    def db(self) -> Path:
        return self.home / "data" / "ams.db"

    def audit_rows(self) -> int:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            return int(conn.execute("SELECT count(*) FROM audit_events").fetchone()[0])

    def db_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.db, self.db.with_name("ams.db-wal")) if p.exists())

    def client(self, token: str | None = None, *, address: str = "127.0.0.1") -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = httpx.HTTPTransport(local_address=address)
        return httpx.Client(base_url=self.server.url, headers=headers, timeout=10, transport=transport)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    home = tmp_path_factory.mktemp("throttle") / "home"
    _json(run_ams("init", "--recovery-password-stdin", "--json", home=home, input=RECOVERY_PASSWORD + "\n"))
    instance = open_instance(Home(home), SystemClock())
    try:
        created = apikeys.create(instance, "ops", Role.ADMIN, actor="test")
        admin = {"id": created.info.id, "token": created.token}
        regkey = regkeys.create(instance, "fleet", actor="test").key
        # No scheduled backup when the second test runs the service 400 days later.
        schedule.set_settings(instance, actor="test", every="100w")
    finally:
        instance.close()
    # Start the server's clock just past the start of a throttle window, so no window ends
    # (and writes its 1203 events) while the test measures.
    offset = WINDOW_SECONDS - time.time() % WINDOW_SECONDS + 1
    server = Server(home, env={"AMS_CLOCK_OFFSET_SECONDS": str(offset)})
    try:
        with httpx.Client(base_url=server.url, timeout=10) as api:
            made = api.post("/api/v1/agent/register", json={"registration_key": regkey, "name": "host-1"})
        assert made.status_code == 201, made.text
        yield Env(home, server, admin, regkey, made.json()["token"])
    finally:
        server.stop()


def _bad_bearer(api: httpx.Client, token: str) -> httpx.Response:
    return api.get("/api/v1/status", headers={"Authorization": f"Bearer {token}"})


def _bad_device(api: httpx.Client, n: int) -> httpx.Response:
    return api.get("/api/v1/agent/password", headers={"Authorization": f"Bearer dev_{n:016x}.wrong"})


def _bad_registration(api: httpx.Client, n: int) -> httpx.Response:
    body = {"registration_key": f"rk_{n:016x}.wrong", "name": "intruder"}
    return api.post("/api/v1/agent/register", json=body)


def _sigv4_unknown_key(api: httpx.Client, n: int) -> httpx.Response:
    url = str(api.base_url.join("/aws/ds"))
    body = json.dumps({}).encode()
    request = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={
            "X-Amz-Target": "DirectoryService_20150416.DescribeDirectories",
            "Content-Type": "application/x-amz-json-1.1",
        },
    )
    SigV4Auth(Credentials(f"ak_{n:016x}", "not-a-secret"), "ds", "us-east-1").add_auth(request)
    return api.post("/aws/ds", content=body, headers=dict(request.headers.items()))


def _throttled(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert int(response.headers["Retry-After"]) >= 1


def test_a_burst_of_bad_credentials_is_throttled_and_writes_nothing(env: Env) -> None:
    admin_id = env.admin["id"]
    wrong_admin = f"{admin_id}.not-the-secret"
    with env.client() as attacker, env.client(address=ELSEWHERE) as other:
        # The first LIMIT failures are answered 401 and recorded, one event each, as before.
        before = env.audit_rows()
        for _ in range(LIMIT):
            assert _bad_bearer(attacker, wrong_admin).status_code == 401
        assert env.audit_rows() == before + LIMIT
        # Past the limit: 429 with Retry-After, for the address and for the key id.
        _throttled(_bad_bearer(attacker, wrong_admin))
        assert _bad_bearer(attacker, wrong_admin).json()["error"] == "too_many_requests"
        # Every kind of credential from that address is throttled now, each in its shape.
        _throttled(_bad_device(attacker, 1))
        _throttled(_bad_registration(attacker, 1))
        aws = _sigv4_unknown_key(attacker, 1)
        _throttled(aws)
        assert aws.json()["__type"] == "ThrottlingException"
        assert aws.headers["x-amzn-ErrorType"] == "ThrottlingException"
        # Another address: the attacked key id is throttled there too, a fresh id is not.
        _throttled(_bad_bearer(other, wrong_admin))
        assert _bad_bearer(other, "ak_00000000000000ff.wrong").status_code == 401

        # Valid credentials pass during the throttle, from the attacker's address and
        # from anywhere else (docs/security.md: the throttle never refuses a valid one).
        for api in (attacker, other):
            status = api.get("/api/v1/status", headers={"Authorization": f"Bearer {env.admin['token']}"})
            assert status.status_code == 200, status.text
            advice = api.get(
                "/api/v1/agent/password", headers={"Authorization": f"Bearer {env.device_token}"}
            )
            assert advice.status_code == 200, advice.text
        joined = attacker.post(
            "/api/v1/agent/register", json={"registration_key": env.regkey, "name": "host-2"}
        )
        assert joined.status_code == 201, joined.text
        # ... and a success does not reset the attacker's count.
        _throttled(_bad_bearer(attacker, wrong_admin))

        # The burst: every kind, many times. Not one row, not one byte.
        rows, size = env.audit_rows(), env.db_bytes()
        for n in range(BURST):
            _throttled(_bad_bearer(attacker, f"ak_{n:016x}.wrong"))
            _throttled(_bad_device(attacker, n))
            _throttled(_bad_registration(attacker, n))
            _throttled(_sigv4_unknown_key(attacker, n))
        assert env.audit_rows() == rows
        assert env.db_bytes() == size
        metrics = attacker.get("/metrics").text
        assert f'ams_auth_failures_total{{answer="throttled",kind="sigv4"}} {1 + BURST}.0' in metrics
        assert "ams_auth_throttled 2.0" in metrics  # the address and the attacked key id

    # The service writes the window's count when it stops (or when the window ends).
    env.server.stop()
    events = json.loads(run_ams("audit", "list", "--event", "1203", "--json", home=env.home).stdout)
    by_target = {e["target"]: e for e in events}
    attacker_summary = by_target["127.0.0.1"]
    assert attacker_summary["details"]["by"] == "address"
    # Every 429 from the attacker's address, and nothing else, is in its count.
    assert attacker_summary["details"]["unrecorded"] == 2 + 1 + 1 + 1 + 1 + 4 * BURST
    assert attacker_summary["details"]["kinds"]["sigv4"] == 1 + BURST
    assert attacker_summary["details"]["kinds"]["registration_key"] == 1 + BURST
    assert attacker_summary["details"]["kinds"]["device_token"] == 1 + BURST
    assert admin_id in attacker_summary["details"]["key_ids"]
    key_summary = by_target[admin_id]
    assert key_summary["details"]["by"] == "key_id"
    assert key_summary["details"]["unrecorded"] == 1
    assert key_summary["details"]["addresses"] == ["127.0.0.1", ELSEWHERE]


def _metric(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[1])


def _ids(env: Env, where: str = "1 = 1", *args: object) -> list[int]:
    with sqlite3.connect(f"file:{env.db}?mode=ro", uri=True) as conn:
        rows = conn.execute(f"SELECT event_id FROM audit_events WHERE {where} ORDER BY seq", args)  # noqa: S608
        return [r[0] for r in rows]


def _actors(env: Env, event_id: int) -> list[str]:
    with sqlite3.connect(f"file:{env.db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT actor FROM audit_events WHERE event_id = ? ORDER BY seq", (event_id,))
        return [r[0] for r in rows]


def test_the_service_prunes_the_trail_by_retention_and_shows_its_size(env: Env) -> None:
    """Uses the home the test above left: its events, 400 days later, are past retention."""
    env.server.stop()
    assert env.audit_rows() > LIMIT
    # Everything written so far happened before this (in the database's naive UTC form).
    today = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S")
    later = {"AMS_CLOCK_OFFSET_SECONDS": str(400 * 86400)}
    with Server(env.home, env=later) as server:
        deadline = time.monotonic() + 30
        while not _actors(env, 1004) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _actors(env, 1004) == ["service"]
        # Of the old events, only the newest 1005 (the retention in effect) is left.
        assert _ids(env, "at < ?", today) == [1005]
        metrics = httpx.get(server.url + "/metrics", timeout=10).text
        assert _metric(metrics, "ams_audit_events") == len(_ids(env))
        oldest = _metric(metrics, "ams_audit_oldest_event_timestamp_seconds")
        assert time.time() - 3600 < oldest < time.time() + 600  # that 1005, written today
    status = _json(run_ams("status", "--json", home=env.home))
    assert status["audit"]["events"] == len(_ids(env))
    assert status["audit"]["retention_days"] == 365
    assert datetime.fromisoformat(status["audit"]["oldest_at"]).timestamp() == pytest.approx(oldest)

    # A bad setting is refused with a message that names it, and nothing changes.
    config = env.home / "config" / "ams.toml"
    good = config.read_text()
    config.write_text(good.replace("retention_days = 365", "retention_days = -1"))
    rows = env.audit_rows()
    refused = run_ams("audit", "prune", home=env.home, env=later)
    assert refused.returncode == 12
    assert "audit.retention_days" in refused.stderr and "Traceback" not in refused.stderr
    assert env.audit_rows() == rows

    # On demand, with a new retention: 1005 records the change, then the older 1005 goes.
    config.write_text(good.replace("retention_days = 365", "retention_days = 30"))
    pruned = _json(run_ams("audit", "prune", "--json", home=env.home, env=later))
    assert pruned["retention_changed"] == {"from": 365, "to": 30}
    assert pruned["removed"] == 1
    assert _actors(env, 1004)[-1].startswith("cli:")
    assert _ids(env, "at < ?", today) == []
    assert _ids(env, "event_id = 1005") == [1005]
    assert pruned["events"] == env.audit_rows() == rows + 2 - 1
