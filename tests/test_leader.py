"""ams.leader: the background jobs run in exactly one process, and another takes over.

Two Instance objects on one home stand for two workers: a second ``flock`` on the same
file (another open file description) is refused as it is between processes; on
PostgreSQL each has its own connection, so its own advisory-lock session.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from ams.clock import ManualClock
from ams.home import Home
from ams.instance import Instance, open_instance
from ams.leader import JobsLeader


@pytest.fixture
def other(instance: Instance, home: Home, clock: ManualClock) -> Iterator[Instance]:
    second = open_instance(home, clock)
    try:
        yield second
    finally:
        second.close()


def _one_leads_then_the_other_takes_over(first: Instance, second: Instance) -> None:
    elected = {"first": threading.Event(), "second": threading.Event()}
    a = JobsLeader(first, elected["first"].set, retry=0.05)
    b = JobsLeader(second, elected["second"].set, retry=0.05)
    a.start()
    b.start()
    try:
        assert elected["first"].is_set() and a.leading
        assert not elected["second"].wait(0.3) and not b.leading
        a.stop()
        assert elected["second"].wait(10) and b.leading
    finally:
        a.stop()
        b.stop()


def test_on_sqlite_one_worker_leads_and_another_takes_over(instance: Instance, other: Instance) -> None:
    _one_leads_then_the_other_takes_over(instance, other)
    assert (instance.home.run_dir / "jobs.lock").read_text() == ""  # released


def test_on_postgresql_one_node_leads_and_another_takes_over(pg_instance: Instance) -> None:
    second = open_instance(pg_instance.home, pg_instance.clock)
    try:
        _one_leads_then_the_other_takes_over(pg_instance, second)
    finally:
        second.close()
