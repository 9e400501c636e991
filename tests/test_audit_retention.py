"""ams.audit_retention: pruning by ``[audit] retention_days``, on SQLite and PostgreSQL, with a
ManualClock that moves days in an instant."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from ams import apikeys, audit, audit_retention
from ams.apikeys import Role
from ams.audit_retention import AuditJobs, prune, trail_size
from ams.clock import ManualClock
from ams.config import AuditSettings
from ams.instance import Instance
from ams.security.throttle import WINDOW, AuthKind


@pytest.fixture(params=["sqlite", "postgresql"])
def any_instance(request: pytest.FixtureRequest) -> Instance:
    name = "instance" if request.param == "sqlite" else "pg_instance"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


def _retain(instance: Instance, days: int) -> None:
    instance.settings = dataclasses.replace(instance.settings, audit=AuditSettings(retention_days=days))


def _ids(instance: Instance) -> list[int]:
    with instance.session() as session:
        return [e.event_id for e in audit.list_events(session)]


def test_prune_removes_what_is_past_retention_and_records_it(
    any_instance: Instance, clock: ManualClock
) -> None:
    instance = any_instance
    start = clock.now()
    old = len(_ids(instance))
    clock.advance(timedelta(days=200))
    apikeys.create(instance, "recent", Role.READER, actor="test")
    clock.advance(timedelta(days=200))

    result = prune(instance, "cli:test")
    assert result.retention_changed == {"from": None, "to": 365}
    assert result.removed == old
    assert result.before == clock.now() - timedelta(days=365)
    assert _ids(instance) == [1200, 1005, 1004]
    with instance.session() as session:
        [pruned] = audit.list_events(session, event_id=int(audit.Event.AUDIT_PRUNED))
    assert pruned.actor == "cli:test"
    assert pruned.details == {"removed": old, "before": result.before.isoformat(), "retention_days": 365}
    size = trail_size(instance)
    assert size.events == 3 and size.oldest_at == start + timedelta(days=200)

    # Nothing more to remove: on demand it is recorded, by the service it is not; the
    # retention is unchanged, so no second 1005.
    assert prune(instance, "cli:test").removed == 0
    assert prune(instance, "service", record_nothing_removed=False).removed == 0
    assert _ids(instance) == [1200, 1005, 1004, 1004]


def test_the_newest_retention_event_is_kept_however_old(instance: Instance, clock: ManualClock) -> None:
    prune(instance, "service")
    clock.advance(timedelta(days=1000))
    prune(instance, "service")
    assert _ids(instance) == [1005, 1004]  # the 1005 is 1000 days old and stays
    _retain(instance, 30)
    result = prune(instance, "service")
    assert result.retention_changed == {"from": 365, "to": 30}
    assert _ids(instance) == [1004, 1005, 1004]  # the old 1005 went with the rest


def test_zero_keeps_every_event(instance: Instance, clock: ManualClock) -> None:
    _retain(instance, 0)
    before = _ids(instance)
    clock.advance(timedelta(days=10_000))
    result = prune(instance, "service")
    assert (result.removed, result.before) == (0, None)
    assert _ids(instance) == [*before, 1005]


def test_a_large_backlog_goes_in_batches_each_with_its_event(
    instance: Instance, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(7):
        apikeys.create(instance, f"k{n}", Role.READER, actor="test")
    old = len(_ids(instance))
    monkeypatch.setattr(audit_retention, "BATCH", 3)
    clock.advance(timedelta(days=366))
    result = prune(instance, "service")
    assert result.removed == old
    with instance.session() as session:
        batches = [
            e.details["removed"] for e in audit.list_events(session, event_id=int(audit.Event.AUDIT_PRUNED))
        ]
    assert sum(batches) == old and max(batches) == 3


def test_the_audit_job_prunes_hourly_and_writes_the_throttle_sums(
    instance: Instance, clock: ManualClock
) -> None:
    jobs = AuditJobs(instance)
    jobs.start()  # a ManualClock: no thread, the test ticks
    clock.advance(timedelta(days=400))
    assert jobs.tick()["pruned"]["removed"] > 0
    clock.advance(timedelta(minutes=30))
    assert jobs.tick()["pruned"] is None  # not due again within the hour
    clock.advance(WINDOW / 2)  # mid-window
    for _ in range(12):
        instance.auth_throttle.failure(AuthKind.API_KEY, "192.0.2.1", None)
    assert jobs.tick()["summaries"] == 0
    clock.advance(WINDOW * 2 / 3)  # the next window, less than a window since the last failure
    assert jobs.tick()["summaries"] == 1
    instance.auth_throttle.failure(AuthKind.API_KEY, "192.0.2.1", None)  # still throttled
    jobs.stop()  # the current window's sum is written at stop
    with instance.session() as session:
        sums = audit.list_events(session, event_id=int(audit.Event.AUTH_FAILURES_THROTTLED))
    assert [e.details["unrecorded"] for e in sums] == [2, 1]
