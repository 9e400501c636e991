"""The vault services in-process: schema, registration keys, devices, policy, reading passwords."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import event

from ams import audit
from ams.api import create_app
from ams.cli import main as cli_main
from ams.clock import ManualClock
from ams.db.models import Base
from ams.db.models.vault import Device, RegistrationKey
from ams.errors import (
    AlreadyExists,
    BadInput,
    Conflict,
    DevicePendingApproval,
    DeviceTokenInvalid,
    MasterKeyLocked,
    NotFound,
    RegistrationKeyInvalid,
    RegistrationKeyRefused,
)
from ams.instance import Instance, open_instance
from ams.vault import certificates, devices, passwords, policy, regkeys
from conftest import run_ams
from vault_support import _small_keys, register  # noqa: F401 - _small_keys is a fixture

PFX_PASSWORD = "Quartz-Meadow-Pelican-8802"
VAULT_TABLES = {"registration_keys", "devices", "device_passwords", "password_policies"}


def _events(instance: Instance, event: audit.Event) -> list[audit.EventRecord]:
    with instance.session() as session:
        return audit.list_events(session, event_id=event)


def test_the_migration_builds_exactly_the_models(instance: Instance) -> None:
    with instance.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)

    def table_of(entry: object) -> str | None:
        item = entry[0] if isinstance(entry, list) else entry
        for part in item[1:] if isinstance(item, tuple) else ():
            name = getattr(part, "name", None)
            table = getattr(part, "table", None)
            if table is not None:
                return str(table.name)
            if isinstance(name, str) and name in VAULT_TABLES:
                return name
            if isinstance(part, str) and part in VAULT_TABLES:
                return part
        return None

    assert [d for d in diff if table_of(d) in VAULT_TABLES] == []
    with instance.engine.connect() as conn:
        tables = set(conn.dialect.get_table_names(conn))
    assert tables >= VAULT_TABLES


# -- registration keys -----------------------------------------------------------------------


def test_regkey_create_shows_the_secret_once_and_keeps_its_hash(instance: Instance) -> None:
    created = regkeys.create(instance, "laptops", "test", limit=3, approval=True)
    assert created.key.startswith(created.info.id + ".")
    assert created.info.id.startswith("rk_") and len(created.info.id) == 19
    with instance.session() as session:
        row = session.get(RegistrationKey, created.info.id)
        assert row is not None
        assert created.secret not in (row.secret_hash, row.name)
        assert row.activation_limit == 3 and row.approval_required
    listed = regkeys.list_keys(instance)
    assert [k.to_dict() for k in listed] == [created.info.to_dict()]
    assert "secret" not in listed[0].to_dict()
    assert _events(instance, audit.Event.REGISTRATION_KEY_CREATED)[0].target == created.info.id


def test_regkey_names_are_unique_and_checked(instance: Instance) -> None:
    regkeys.create(instance, "servers", "test")
    with pytest.raises(AlreadyExists):
        regkeys.create(instance, "servers", "test")
    with pytest.raises(BadInput):
        regkeys.create(instance, "  ", "test")
    with pytest.raises(BadInput):
        regkeys.create(instance, "x", "test", limit=0)
    assert len(regkeys.list_keys(instance)) == 1


def test_registration_limit_and_disable(instance: Instance) -> None:
    key = regkeys.create(instance, "two", "test", limit=2)
    first = devices.register(instance, key.key, "host-1")
    second = devices.register(instance, key.key, "host-2")
    assert first.status == second.status == "active"
    assert first.device_id != second.device_id
    with pytest.raises(RegistrationKeyRefused, match="activation limit"):
        devices.register(instance, key.key, "host-3")
    assert regkeys.list_keys(instance)[0].state == "used up"

    other = regkeys.create(instance, "other", "test")
    devices.register(instance, other.key, "host-4")
    assert regkeys.disable(instance, "other", "test").state == "disabled"
    with pytest.raises(RegistrationKeyRefused, match="disabled"):
        devices.register(instance, other.key, "host-5")
    # Devices it registered keep working.
    assert devices.authenticate(instance, first.token).id == first.device_id
    assert {d.name for d in devices.list_devices(instance)} == {"host-1", "host-2", "host-4"}
    refused = _events(instance, audit.Event.DEVICE_REGISTRATION_REFUSED)
    assert [e.details["reason"] for e in refused] == ["activation limit reached", "disabled"]
    assert all(e.outcome == "failure" for e in refused)


@pytest.mark.parametrize("bad", ["", "rk_nothing", "rk_0123456789abcdef.wrong", "nonsense.x"])
def test_registration_with_a_bad_key_is_refused(instance: Instance, bad: str) -> None:
    key = regkeys.create(instance, "k", "test")
    attempt = bad if bad != "rk_0123456789abcdef.wrong" else key.info.id + ".wrong"
    with pytest.raises(RegistrationKeyInvalid):
        devices.register(instance, attempt, "host")
    assert devices.list_devices(instance) == []
    assert regkeys.list_keys(instance)[0].used_count == 0


def test_pending_devices_wait_for_approval(instance: Instance, clock: ManualClock) -> None:
    key = regkeys.create(instance, "approve-me", "test", approval=True)
    dev = devices.register(instance, key.key, "kiosk")
    assert dev.status == "pending"
    with pytest.raises(DevicePendingApproval, match="ams device approve"):
        devices.authenticate(instance, dev.token)
    clock.advance(timedelta(minutes=5))
    approved = devices.approve(instance, "kiosk", "cli:admin")
    assert approved.status == "active" and approved.approved_at == clock.now()
    assert devices.authenticate(instance, dev.token).id == dev.device_id
    assert devices.show(instance, dev.device_id).last_seen_at == clock.now()
    assert _events(instance, audit.Event.DEVICE_APPROVED)[0].actor == "cli:admin"


def test_device_tokens_are_checked(instance: Instance) -> None:
    key = regkeys.create(instance, "k", "test")
    dev = devices.register(instance, key.key, "host")
    for token in (None, "", dev.device_id, dev.device_id + ".wrong", "dev_0000000000000000.x", dev.secret):
        with pytest.raises(DeviceTokenInvalid):
            devices.authenticate(instance, token)
    with instance.session() as session:
        row = session.get(Device, dev.device_id)
        assert row is not None and dev.secret not in row.token_hash
    failures = _events(instance, audit.Event.DEVICE_AUTH_FAILED)
    assert len(failures) == 6
    assert dev.secret not in repr([f.to_dict() for f in failures])


def test_find_by_name_needs_a_unique_name(instance: Instance) -> None:
    key = regkeys.create(instance, "k", "test")
    a = devices.register(instance, key.key, "twin")
    devices.register(instance, key.key, "twin")
    with pytest.raises(BadInput, match="2 devices are named 'twin'"):
        devices.show(instance, "twin")
    assert devices.show(instance, a.device_id).id == a.device_id
    with pytest.raises(NotFound):
        devices.show(instance, "nobody")


def test_expire_one_scope_or_all(instance: Instance) -> None:
    key = regkeys.create(instance, "k", "test")
    ids = [devices.register(instance, key.key, f"h{i}").device_id for i in range(3)]
    assert devices.expire(instance, "test", device="h1") == [ids[1]]
    assert sorted(devices.expire(instance, "test", scope="agent")) == sorted(ids)
    assert sorted(devices.expire(instance, "test", everything=True)) == sorted(ids)
    assert all(d.rotation_forced for d in devices.list_devices(instance))
    for bad in ({}, {"device": "h1", "everything": True}):
        with pytest.raises(BadInput):
            devices.expire(instance, "test", **bad)  # type: ignore[arg-type]
    with pytest.raises(BadInput):
        devices.expire(instance, "test", scope="nonsense")
    assert len(_events(instance, audit.Event.DEVICE_ROTATION_FORCED)) == 7


def test_policy_defaults_and_changes(instance: Instance) -> None:
    with instance.session() as session:
        default = policy.get_policy(session, "agent")
    assert (default.length, default.max_age_days, default.history_keep_count, default.history_keep_days) == (
        20,
        30,
        30,
        0,
    )
    changed = policy.set_policy(instance, "default", "test", length=24)
    assert changed.length == 24
    agent = policy.set_policy(instance, "agent", "test", history_keep_count=5, history_keep_days=365)
    assert (agent.length, agent.history_keep_count, agent.history_keep_days) == (24, 5, 365)
    with instance.session() as session:
        assert policy.get_policy(session, "d-0123456789").length == 24
        assert policy.get_policy(session, "agent").history_keep_days == 365
    for bad in ({"length": 4}, {"max_age_days": 0}, {"account": "root:x"}, {"history_keep_count": -1}):
        with pytest.raises(BadInput):
            policy.set_policy(instance, "agent", "test", **bad)
    with pytest.raises(BadInput):
        policy.set_policy(instance, "elsewhere", "test", length=30)
    assert len(_events(instance, audit.Event.PASSWORD_POLICY_CHANGED)) == 2


# -- passwords: reading, lost keys, what the certificates service calls ----------------------


@pytest.fixture
def client(instance: Instance) -> Iterator[TestClient]:
    with TestClient(create_app(instance)) as c:
        yield c


def test_history_under_a_lost_key_is_unrecoverable_never_an_error(
    client: TestClient, instance: Instance, clock: ManualClock
) -> None:
    agent = register(client, instance, "web")
    agent.rotate()
    clock.advance(timedelta(days=31))
    agent.rotate()
    old = certificates.active_certificate(instance, "agent")
    assert old is not None
    with instance.session() as session:
        assert passwords.counts_by_certificate(session) == {old.thumbprint: (1, 1)}

    pfx = certificates.export(instance, old.thumbprint, PFX_PASSWORD, "test")
    result = certificates.lost(instance, old.thumbprint, "test")
    assert result.expired_passwords == 1
    current = passwords.read(instance, "web", "cli:ops")
    assert (current["version"], current["recoverable"], current["password"]) == (2, False, None)
    assert "lost" in current["unrecoverable_reason"]

    advice = agent.advice()
    assert advice["reason"] == "expired" and advice["certificate"]["thumbprint"] != old.thumbprint
    agent.rotate()
    history = passwords.read(instance, agent.device_id, "cli:ops", history=True)
    assert history["current"]["password"] == agent.passwords[3]
    assert [(h["version"], h["recoverable"], h["password"]) for h in history["history"]] == [
        (2, False, None),
        (1, False, None),
    ]
    with instance.session() as session:
        counts = passwords.counts_by_certificate(session)
    assert counts == {old.thumbprint: (0, 2), advice["certificate"]["thumbprint"]: (1, 0)}
    reads = _events(instance, audit.Event.PASSWORD_READ)
    assert [(r.actor, r.details["versions"]) for r in reads] == [("cli:ops", [2]), ("cli:ops", [3, 2, 1])]

    # The PFX of the lost certificate, imported again, makes its passwords readable again.
    assert certificates.import_pfx(instance, pfx, PFX_PASSWORD, "agent", "test").restored
    again = passwords.read(instance, agent.device_id, "cli:ops", history=True)
    assert [h["password"] for h in again["history"]] == [agent.passwords[2], agent.passwords[1]]


def test_expire_current_under_expires_only_current_passwords_of_that_certificate(
    client: TestClient, instance: Instance, clock: ManualClock
) -> None:
    first, second = register(client, instance, "a"), register(client, instance, "b")
    first.rotate()
    clock.advance(timedelta(days=31))
    first.rotate()
    thumbprint = first.advice()["certificate"]["thumbprint"]
    certificates.create(instance, "agent", "test", activate=True)
    second.rotate()  # under the new certificate
    with instance.transaction() as session:
        assert passwords.expire_current_under(session, instance.clock, thumbprint) == 1
        assert passwords.expire_current_under(session, instance.clock, "0" * 64) == 0
    assert first.advice()["reason"] == "expired"
    assert second.advice()["rotate"] is False
    assert devices.show(instance, "a").password_expires_at == clock.now()


def test_a_lost_key_expires_its_passwords_in_one_statement_without_reading_every_password(
    client: TestClient, instance: Instance, clock: ManualClock
) -> None:
    """On 100,000 devices, each extra pass over device_passwords costs a fraction of a second
    (bench/expiry_bench.py): one UPDATE expires them and counts them; the lost key's history is
    counted from its index, never by grouping every certificate's passwords."""
    agents = [register(client, instance, name) for name in ("a", "b", "c")]
    for agent in agents:
        agent.rotate()
    clock.advance(timedelta(days=31))
    agents[0].rotate()  # a: a new current password, the first one in its history
    clock.advance(timedelta(days=29))  # b's and c's passwords expired a month ago; a's has a day left
    old = certificates.active_certificate(instance, "agent")
    assert old is not None
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if "device_passwords" in statement:
            statements.append(" ".join(statement.split()))

    event.listen(instance.engine, "before_cursor_execute", seen)
    try:
        result = certificates.lost(instance, old.thumbprint, "test")
    finally:
        event.remove(instance.engine, "before_cursor_execute", seen)
    writes = [s for s in statements if not s.startswith("SELECT")]
    assert len(writes) == 1 and writes[0].startswith("UPDATE device_passwords"), statements
    assert not [s for s in statements if "GROUP BY" in s], statements
    assert result.expired_passwords == 3
    assert (result.certificate.current_passwords, result.certificate.history_passwords) == (3, 1)
    assert all(agent.advice()["reason"] == "expired" for agent in agents)
    # Already expired passwords keep their earlier expiry; the others expire now.
    expiries = {name: devices.show(instance, name).password_expires_at for name in ("a", "b", "c")}
    assert expiries["a"] == clock.now()
    assert expiries["b"] == expiries["c"] < clock.now()


def test_reading_needs_a_password_and_the_master_key(client: TestClient, instance: Instance) -> None:
    agent = register(client, instance, "fresh")
    with pytest.raises(NotFound, match="no password yet"):
        passwords.read(instance, "fresh", "test")
    assert passwords.read(instance, "fresh", "test", history=True) == {"current": None, "history": []}
    agent.rotate()
    home, clock = instance.home, instance.clock
    instance.close()
    home.service_key_file.unlink()
    locked = open_instance(home, clock)
    try:
        with pytest.raises(MasterKeyLocked):
            passwords.read(locked, "fresh", "cli:someone")
        failed = _events(locked, audit.Event.PASSWORD_READ)[-1]
        assert (failed.outcome, failed.actor, failed.target) == ("failure", "cli:someone", agent.device_id)
    finally:
        locked.close()


# -- the commands ----------------------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *args: str, home: Path) -> tuple[int, str, str]:
    """`ams` in-process (the same entry point as the installed command)."""
    status = cli_main.run([*args, "--home", str(home)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_regkey_device_and_password_commands(
    client: TestClient, instance: Instance, capsys: pytest.CaptureFixture[str]
) -> None:
    home = instance.home.root
    # The real command, once, for the path a user takes.
    created = run_ams("regkey", "create", "--name", "fleet", "--limit", "5", "--json", home=home)
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert key["key"].startswith(key["id"] + ".") and key["activation_limit"] == 5

    agent = register(client, instance, "srv-01", key=key["key"])
    agent.rotate()
    password = agent.passwords[1]

    got = run_ams("password", "get", "srv-01", home=home)
    assert got.returncode == 0, got.stderr
    assert got.stdout == password + "\n"  # only the password on stdout, nothing of it elsewhere
    assert password not in got.stderr and agent.device_id in got.stderr

    status, out, _ = _cli(capsys, "device", "list", "--json", home=home)
    assert status == 0
    assert [(d["id"], d["name"], d["current_version"]) for d in json.loads(out)] == [
        (agent.device_id, "srv-01", 1)
    ]
    assert password not in out
    status, out, _ = _cli(capsys, "password", "get", agent.device_id, "--json", home=home)
    entry = json.loads(out)
    assert (entry["password"], entry["account"], entry["version"]) == (password, "Administrator", 1)
    assert {"effective_at", "expires_at", "certificate_thumbprint"} <= set(entry)
    status, out, _ = _cli(capsys, "password", "get", "srv-01", "--history", "--json", home=home)
    assert json.loads(out)["current"]["password"] == password and json.loads(out)["history"] == []
    status, out, _ = _cli(capsys, "password", "get", "srv-01", "--history", home=home)
    assert status == 0 and out.startswith("v1\tcurrent\t") and out.endswith("\t" + password + "\n")
    reads = _events(instance, audit.Event.PASSWORD_READ)
    assert len(reads) == 4 and all(r.actor.startswith("cli:") for r in reads)

    status, out, _ = _cli(capsys, "device", "expire", "--all", "--json", home=home)
    assert json.loads(out) == {"expired": [agent.device_id]}
    assert agent.advice()["reason"] == "forced"
    status, out, _ = _cli(capsys, "device", "show", "srv-01", "--json", home=home)
    assert json.loads(out)["rotation_forced"] is True

    status, _, err = _cli(capsys, "device", "expire", home=home)
    assert status == 12 and "exactly one" in err
    status, _, err = _cli(capsys, "password", "get", "nobody", home=home)
    assert status == 13 and err.count("\n") == 1
    status, _, _ = _cli(capsys, "regkey", "disable", "fleet", home=home)
    assert status == 0
    status, out, _ = _cli(capsys, "regkey", "list", "--json", home=home)
    assert json.loads(out)[0]["state"] == "disabled"
    assert key["secret"] not in out
    status, out, _ = _cli(capsys, "password", "policy", "--keep-count", "5", "--json", home=home)
    assert status == 0 and json.loads(out)["history_keep_count"] == 5
    status, _, err = _cli(capsys, "password", "policy", "--length", "3", home=home)
    assert status == 12 and "length" in err


def test_a_disabled_device_is_shut_out_but_its_password_stays_readable(
    client: TestClient, instance: Instance
) -> None:
    agent = register(client, instance, "old-box")
    agent.rotate()
    assert devices.disable(instance, "old-box", "cli:admin").status == "disabled"
    refused = agent.check()
    assert refused.status_code == 403 and refused.json()["error"] == "device_disabled"
    assert passwords.read(instance, "old-box", "test")["password"] == agent.passwords[1]
    assert devices.expire(instance, "test", everything=True) == []
    with pytest.raises(Conflict):
        devices.approve(instance, "old-box", "test")
    assert [e.target for e in _events(instance, audit.Event.DEVICE_DISABLED)] == [agent.device_id]
