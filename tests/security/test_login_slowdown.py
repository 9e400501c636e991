"""Failed console logins slow the next ones (ams.security.login_slowdown), on a moved clock."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ams.clock import ManualClock
from ams.errors import TooManyRequests
from ams.security.login_slowdown import FORGET, FREE, MAX_WAIT, LoginSlowdown


def _refused(slowdown: LoginSlowdown, name: str, address: str | None) -> int | None:
    try:
        slowdown.check(name, address)
    except TooManyRequests as exc:
        return exc.retry_after
    return None


def test_waits_double_after_the_free_failures_and_are_capped() -> None:
    clock = ManualClock()
    slowdown = LoginSlowdown(clock)
    for _ in range(FREE):
        assert _refused(slowdown, "alice", "10.0.0.1") is None
        slowdown.failed("alice", "10.0.0.1")
    waits = []
    for _ in range(12):
        waits.append(_refused(slowdown, "alice", "10.0.0.9"))  # another address: the name's wait
        clock.advance(timedelta(seconds=waits[-1] or 0))
        assert _refused(slowdown, "alice", "10.0.0.9") is None
        slowdown.failed("alice", "10.0.0.9")
    assert waits[:5] == [1, 2, 4, 8, 16]
    assert max(waits) == MAX_WAIT.total_seconds()
    # The address that failed is slowed for any name too.
    assert _refused(slowdown, "bob", "10.0.0.9") is not None
    assert _refused(slowdown, "bob", "10.0.0.2") is None


def test_a_success_clears_and_quiet_time_forgets() -> None:
    clock = ManualClock()
    slowdown = LoginSlowdown(clock)
    for _ in range(FREE + 2):
        slowdown.failed("alice", "2001:db8::1")
    assert _refused(slowdown, "alice", "2001:db8::1") is not None
    assert _refused(slowdown, "carol", "2001:db8::ffff") is not None  # the same /64
    clock.advance(FORGET + timedelta(seconds=1))
    assert _refused(slowdown, "alice", "2001:db8::1") is None
    for _ in range(FREE + 2):
        slowdown.failed("alice", "10.1.1.1")
    slowdown.succeeded("alice", "10.1.1.1")
    assert _refused(slowdown, "alice", "10.1.1.1") is None


@pytest.mark.parametrize("address", [None, "not an address"])
def test_odd_addresses_still_count(address: str | None) -> None:
    slowdown = LoginSlowdown(ManualClock())
    for _ in range(FREE + 1):
        slowdown.failed("x", address)
    assert _refused(slowdown, "y", address) is not None
