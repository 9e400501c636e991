"""The hot path's connection kept per process (ams.vault.hotsql.connect) and the reports of
one turn of the event loop written with one commit (passwords.store_prepared, the group
commit of ams.api.fastpath.ReportWrites)."""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import os
import sqlite3
import threading
import weakref
from typing import Any

import httpx
import pytest
from sqlalchemy import event, func, select

from ams import audit
from ams.api import create_app
from ams.clock import ManualClock
from ams.crypto import certs
from ams.crypto.blob import encrypt_password
from ams.db.models import AuditEvent
from ams.errors import Conflict
from ams.home import Home
from ams.instance import Instance, open_instance
from ams.vault import devices, hotcache, hotsql, passwords, policy, regkeys
from vault_support import _small_keys  # noqa: F401 - RSA-2048 here

PATH = "/api/v1/agent/password"


def _devices(instance: Instance, count: int) -> list[str]:
    key = regkeys.create(instance, "k", "test").key
    return [devices.register(instance, key, f"pc-{i}").token for i in range(count)]


def _blob(pem: str, version: int, tag: str = "pw") -> str:
    plaintext = json.dumps({"account": "Administrator", "password": f"{tag}-{version}", "version": version})
    return base64.b64encode(encrypt_password(certs.certificate_from_pem(pem), plaintext.encode())).decode()


def _prepared(instance: Instance, token: str, tag: str = "pw") -> passwords.PreparedReport:
    advice = passwords.check_in(instance, token, None)
    blob = _blob(advice.certificate_pem, advice.next_version, tag)
    return passwords.prepare_report(instance, token, "Administrator", advice.next_version, blob)


def _current(instance: Instance, token: str) -> int | None:
    return passwords.check_in(instance, token, None).current_version


def _rotations(instance: Instance) -> int:
    with instance.session() as session:
        count = session.scalar(
            select(func.count()).where(AuditEvent.event_id == int(audit.Event.PASSWORD_ROTATED))
        )
    return int(count or 0)


def _transactions(instance: Instance) -> list[str]:
    """The BEGIN IMMEDIATE and COMMIT statements sqlite3 runs from now on."""
    seen: list[str] = []

    def trace(statement: str) -> None:
        if statement.split(None, 1)[0].upper() in {"BEGIN", "COMMIT"}:
            seen.append(statement.split(None, 1)[0].upper())

    instance.engine.dispose()  # the kept connection goes too: the next ones are traced
    event.listen(instance.engine, "connect", lambda dbapi, _record: dbapi.set_trace_callback(trace))
    return seen


# -- the kept connection ---------------------------------------------------------------------


def _hot(instance: Instance) -> Any:
    return hotsql.connect(hotcache.for_instance(instance).kept(instance))


def test_the_hot_path_checks_out_one_connection_per_process_and_keeps_it(instance: Instance) -> None:
    (token,) = _devices(instance, 1)
    passwords.check_in(instance, token, None)  # the first request opens it
    checkouts: list[int] = []
    event.listen(instance.engine, "checkout", lambda *_: checkouts.append(1))
    pem = passwords.check_in(instance, token, None).certificate_pem
    stored = passwords.report(instance, token, "Administrator", 1, _blob(pem, 1))
    for _ in range(3):
        passwords.check_in(instance, token, stored.version)
    assert checkouts == []
    with _hot(instance) as first, _hot(instance) as second:
        assert first.conn is not second.conn  # the kept one is in use: the pool's


def test_another_thread_gets_its_own_connection_while_the_kept_one_is_in_use(instance: Instance) -> None:
    seen: list[Any] = []
    with _hot(instance) as hot:
        thread = threading.Thread(target=lambda: seen.append(_hot(instance).__enter__().conn))
        thread.start()
        thread.join()
        assert seen and seen[0] is not hot.conn
        assert isinstance(hot.lock, int)  # the kept descriptor of run/write.lock
    with _hot(instance) as again:
        assert again.conn is hot.conn


def test_a_request_leaves_nothing_open_on_the_kept_connection(instance: Instance) -> None:
    (token,) = _devices(instance, 1)
    with pytest.raises(Exception, match="token"):
        passwords.check_in(instance, token + "x", None)  # refused after its read
    with _hot(instance) as hot:
        assert not hotsql.raw(hot.conn).in_transaction
        assert not hot.conn.in_transaction()


def test_closing_the_instance_closes_the_kept_connection(instance: Instance) -> None:
    with _hot(instance) as hot:
        driver = hotsql.raw(hot.conn)
    instance.close()
    with pytest.raises(sqlite3.ProgrammingError):
        driver.execute("SELECT 1")


def test_a_connection_that_failed_is_dropped_and_the_next_request_opens_another(instance: Instance) -> None:
    with _hot(instance) as hot:
        failed = hot.conn
    with pytest.raises(sqlite3.OperationalError), _hot(instance) as hot:
        hotsql.raw(hot.conn).execute("SELECT * FROM no_such_table")
    with _hot(instance) as hot:
        assert hot.conn is not failed
    assert failed.closed


def test_an_instance_dropped_unclosed_lets_its_connections_go(
    instance: Instance, home: Home, clock: ManualClock
) -> None:
    (token,) = _devices(instance, 1)
    dropped = open_instance(home, clock)
    passwords.check_in(dropped, token, None)  # it keeps a connection now
    engine = weakref.ref(dropped.engine)
    del dropped
    for _ in range(3):  # the pool's finalizers free more at each pass
        gc.collect()
    assert engine() is None


def test_a_forked_child_opens_its_own_and_leaves_the_parents_alone(instance: Instance) -> None:
    with _hot(instance) as hot:
        parents = hot.conn
    pid = os.fork()
    if pid == 0:  # the child: a connection of its own, which works
        try:
            with _hot(instance) as hot:
                mine = hot.conn is not parents and hotsql.raw(hot.conn).execute("SELECT 1").fetchone() == (1,)
            os._exit(0 if mine else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with _hot(instance) as hot:
        assert hot.conn is parents
        assert hotsql.raw(hot.conn).execute("SELECT 1").fetchone() == (1,)


# -- group commit ----------------------------------------------------------------------------


def test_reports_prepared_together_are_written_with_one_commit(instance: Instance) -> None:
    tokens = _devices(instance, 4)
    reports = [_prepared(instance, t) for t in tokens]
    before = _rotations(instance)
    transactions = _transactions(instance)
    stored = passwords.store_prepared(instance, reports)
    assert transactions == ["BEGIN", "COMMIT"]
    assert [s.version for s in stored if isinstance(s, passwords.StoredPassword)] == [1, 1, 1, 1]
    assert [_current(instance, t) for t in tokens] == [1, 1, 1, 1]
    assert _rotations(instance) == before + 4


def test_a_refused_report_leaves_the_others_of_its_batch_stored(instance: Instance) -> None:
    first, second = _devices(instance, 2)
    reports = [_prepared(instance, first), _prepared(instance, first, "other"), _prepared(instance, second)]
    stored = passwords.store_prepared(instance, reports)
    assert isinstance(stored[0], passwords.StoredPassword)
    assert isinstance(stored[1], Conflict)  # the same version again, another password
    assert isinstance(stored[2], passwords.StoredPassword)
    assert (_current(instance, first), _current(instance, second)) == (1, 1)


def test_a_report_that_meets_changed_certificates_is_done_again_on_its_own(instance: Instance) -> None:
    (token,) = _devices(instance, 1)
    report = _prepared(instance, token)
    policy.set_policy(instance, "agent", "test", length=30)  # bumps the generation
    (stored,) = passwords.store_prepared(instance, [report])
    assert isinstance(stored, passwords.StoredPassword) and stored.version == 1


def test_a_batch_that_fails_commits_nothing_and_each_report_is_written_on_its_own(
    instance: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = _devices(instance, 3)
    reports = [_prepared(instance, t) for t in tokens]
    before = _rotations(instance)
    write = passwords._write
    calls: list[int] = []

    def failing(conn: Any, instance_: Instance, prepared: passwords.PreparedReport) -> Any:
        calls.append(1)
        if len(calls) == 2:  # the second write of the batch
            raise sqlite3.OperationalError("disk I/O error")
        return write(conn, instance_, prepared)

    monkeypatch.setattr(passwords, "_write", failing)
    stored = passwords.store_prepared(instance, reports)
    assert all(isinstance(s, passwords.StoredPassword) for s in stored)
    assert [_current(instance, t) for t in tokens] == [1, 1, 1]
    assert _rotations(instance) == before + 3  # the batch's first write was rolled back


def test_concurrent_reports_to_the_service_are_written_together(
    instance: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = _devices(instance, 6)
    batches: list[int] = []
    store = passwords.store_prepared

    def recorded(instance_: Instance, reports: list[passwords.PreparedReport]) -> Any:
        batches.append(len(reports))
        return store(instance_, reports)

    monkeypatch.setattr(passwords, "store_prepared", recorded)
    pem = passwords.check_in(instance, tokens[0], None).certificate_pem

    async def rotate_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(instance))
        async with httpx.AsyncClient(transport=transport, base_url="http://ams") as client:
            return await asyncio.gather(
                *(
                    client.post(
                        PATH,
                        json={"account": "Administrator", "version": 1, "blob": _blob(pem, 1)},
                        headers={"Authorization": f"Bearer {t}"},
                    )
                    for t in tokens
                )
            )

    answers = asyncio.run(rotate_all())
    assert [a.status_code for a in answers] == [201] * 6, [a.text for a in answers]
    assert sum(batches) == 6 and max(batches) > 1
    assert [_current(instance, t) for t in tokens] == [1] * 6


def test_a_batch_checks_every_token_then_decrypts_every_blob_then_writes(
    instance: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = _devices(instance, 3)
    pem = passwords.check_in(instance, tokens[0], None).certificate_pem
    requests = [passwords.report_request(t, "Administrator", 1, _blob(pem, 1)) for t in tokens]
    requests.insert(1, passwords.report_request(tokens[1] + "x", "Administrator", 1, _blob(pem, 1)))
    requests.append(passwords.report_request(tokens[2], "Administrator", 2, "bm90IGEgYmxvYg=="))
    order: list[str] = []
    authenticate, decrypt = passwords._authenticate, passwords._decrypt

    def authenticating(instance_: Instance, request: Any) -> Any:
        order.append("token")
        return authenticate(instance_, request)

    def decrypting(instance_: Instance, found: Any) -> Any:
        order.append("decrypt")
        return decrypt(instance_, found)

    monkeypatch.setattr(passwords, "_authenticate", authenticating)
    monkeypatch.setattr(passwords, "_decrypt", decrypting)
    results = passwords.store_reports(instance, requests)
    # A refused token's blob is never decrypted; one that does not open is refused.
    assert order == ["token"] * 5 + ["decrypt"] * 4
    assert [type(r).__name__ for r in results] == [
        "StoredPassword",
        "DeviceTokenInvalid",
        "StoredPassword",
        "StoredPassword",
        "PasswordUndecryptable",
    ]
    assert [_current(instance, t) for t in tokens] == [1, 1, 1]
