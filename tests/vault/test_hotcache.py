"""The hot path's per-process cache and its generation number (issue 12).

Two Instance objects opened on one home stand for two processes (two workers, or a worker
and the CLI): each has its own cache (ams.vault.hotcache), and the only thing they share
is the database. A change made through one is seen by the other at its next request.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event

from ams import apikeys
from ams.clock import ManualClock
from ams.crypto import certs
from ams.crypto.blob import encrypt_password
from ams.errors import AuthenticationRequired, PasswordUndecryptable
from ams.home import Home
from ams.instance import Instance, open_instance
from ams.vault import certificates, devices, hotcache, passwords, policy, regkeys
from vault_support import _small_keys  # noqa: F401 - RSA-2048 here


@pytest.fixture
def other(instance: Instance, home: Home, clock: ManualClock) -> Iterator[Instance]:
    """The same instance opened a second time: another process's view of it."""
    second = open_instance(home, clock)
    try:
        yield second
    finally:
        second.close()


def _device(instance: Instance) -> str:
    key = regkeys.create(instance, "k", "test").key
    return devices.register(instance, key, "pc-1").token


def _blob(pem: str, version: int) -> str:
    plaintext = json.dumps({"account": "Administrator", "password": f"pw-{version}", "version": version})
    return base64.b64encode(encrypt_password(certs.certificate_from_pem(pem), plaintext.encode())).decode()


def _rotate(instance: Instance, token: str, version: int | None) -> tuple[int, str]:
    advice = passwords.check_in(instance, token, version)
    stored = passwords.report(
        instance,
        token,
        "Administrator",
        advice.next_version,
        _blob(advice.certificate_pem, advice.next_version),
    )
    return stored.version, advice.certificate_pem


def _statements(instance: Instance) -> list[str]:
    """The SQL statements the driver runs from now on (the hot path runs its statements on
    sqlite3 itself, past SQLAlchemy's events: sqlite3's trace callback sees them all)."""
    seen: list[str] = []

    def trace(statement: str) -> None:
        if statement.split(None, 1)[0].upper() in {"SELECT", "INSERT", "UPDATE", "DELETE"}:
            seen.append(statement)

    def traced(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.set_trace_callback(trace)

    instance.engine.dispose()  # the next connections are new ones, traced
    event.listen(instance.engine, "connect", traced)
    return seen


def test_a_lost_key_is_refused_by_the_other_process_at_its_next_report(
    instance: Instance, other: Instance
) -> None:
    token = _device(instance)
    version, pem = _rotate(instance, token, None)
    version, _ = _rotate(other, token, version)  # the other process now holds the key
    thumbprint = certificates.active_certificate(instance, "agent")
    assert thumbprint is not None and hotcache.for_instance(other).key(thumbprint.thumbprint) is not None

    lost = certificates.lost(instance, thumbprint.thumbprint, "test")
    assert lost.replacement is not None

    with pytest.raises(PasswordUndecryptable):
        passwords.report(other, token, "Administrator", version + 1, _blob(pem, version + 1))
    assert hotcache.for_instance(other).key(thumbprint.thumbprint) is None
    advice = passwords.check_in(other, token, version)
    assert (advice.reason, advice.certificate_thumbprint) == ("expired", lost.replacement.thumbprint)


def test_a_policy_change_is_seen_by_the_other_process_at_its_next_check_in(
    instance: Instance, other: Instance
) -> None:
    token = _device(instance)
    version, _ = _rotate(other, token, None)
    assert passwords.check_in(other, token, version).policy.length == 20
    policy.set_policy(instance, "agent", "test", length=33)
    assert passwords.check_in(other, token, version).policy.length == 33


def test_a_warm_check_in_is_one_statement_and_a_report_six(instance: Instance) -> None:
    token = _device(instance)
    version, _ = _rotate(instance, token, None)  # warms the cache
    statements = _statements(instance)
    advice = passwords.check_in(instance, token, version)
    assert len(statements) == 1, statements  # the device, its password and the generation
    statements.clear()
    blob = _blob(advice.certificate_pem, advice.next_version)
    passwords.report(instance, token, "Administrator", advice.next_version, blob)
    # who the device is; then under the write lock: its state, supersede, insert, update
    # the device (with last_seen_at), audit
    assert len(statements) == 6, statements


def test_a_disabled_device_is_refused_at_once(instance: Instance, other: Instance) -> None:
    token = _device(instance)
    version, _ = _rotate(other, token, None)
    devices.disable(instance, token.partition(".")[0], "test")
    with pytest.raises(Exception, match="disabled"):
        passwords.check_in(other, token, version)


def test_an_administrators_warm_read_is_three_statements(instance: Instance) -> None:
    token = _device(instance)
    _rotate(instance, token, None)
    device_id = token.partition(".")[0]
    key = apikeys.create(instance, "reader", apikeys.Role.READER, "test")
    reader = f"apikey:{key.info.id}"

    def checked(conn: Any) -> str:
        return f"apikey:{apikeys.authenticate(instance, key.token, apikeys.Role.READER, conn=conn).id}"

    passwords.read(instance, device_id, checked)  # warms the cache, notes the key's last use
    statements = _statements(instance)
    entry = passwords.read(instance, device_id, checked)
    assert entry["password"] == "pw-1" and entry["recoverable"]
    # the key's row; the device, its current password and the generation; the audit event
    assert len(statements) == 3, statements
    statements.clear()
    assert passwords.read(instance, "pc-1", reader)["password"] == "pw-1"  # by its name: one more
    assert len(statements) == 3, statements


def test_a_revoked_api_key_is_refused_by_the_other_process_at_once(
    instance: Instance, other: Instance
) -> None:
    key = apikeys.create(instance, "reader", apikeys.Role.READER, "test")
    assert apikeys.authenticate(other, key.token, apikeys.Role.READER).id == key.info.id
    apikeys.revoke(instance, key.info.id, "test")
    with pytest.raises(AuthenticationRequired):
        apikeys.authenticate(other, key.token, apikeys.Role.READER)
