"""Failed console logins slow the next ones (ams.security.login_slowdown), on a moved clock."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ams.clock import ManualClock
from ams.errors import TooManyRequests
from ams.security.login_slowdown import FORGET, FREE, MAX_WAIT, LoginSlowdown


def _refused(slowdown: LoginSlowdown, name: str, address: str | None) -> int | None:
    """Begin one attempt (counted as a failure until forgiven); the wait when it is refused."""
    try:
        slowdown.begin(name, address)
    except TooManyRequests as exc:
        return exc.retry_after
    return None


def test_waits_double_after_the_free_attempts_and_are_capped() -> None:
    clock = ManualClock()
    slowdown = LoginSlowdown(clock)
    assert [_refused(slowdown, "alice", "10.0.0.1") for _ in range(FREE)] == [None] * FREE
    waits = []
    for _ in range(12):
        wait = _refused(slowdown, "alice", "10.0.0.1")
        assert wait is not None
        waits.append(wait)
        clock.advance(timedelta(seconds=wait))
        assert _refused(slowdown, "alice", "10.0.0.1") is None  # the attempt after the wait
    assert waits[:5] == [1, 2, 4, 8, 16] and max(waits) == MAX_WAIT.total_seconds()
    # The address is slowed for every name it tries ...
    assert _refused(slowdown, "bob", "10.0.0.1") is not None


def test_nobody_else_is_locked_out_by_an_attacker() -> None:
    slowdown = LoginSlowdown(ManualClock())
    for _ in range(FREE + 3):
        _refused(slowdown, "alice", "203.0.113.9")
    # ... but alice herself, from her own address, is not slowed at all.
    assert _refused(slowdown, "alice", "198.51.100.7") is None


def test_attempts_count_before_their_password_is_checked() -> None:
    # Parallel attempts cannot all pass while the slow hashes run: each is counted at once.
    slowdown = LoginSlowdown(ManualClock())
    answers = [_refused(slowdown, "alice", "10.9.9.9") for _ in range(FREE + 3)]
    assert answers[:FREE] == [None] * FREE and all(a is not None for a in answers[FREE:])


def test_a_success_forgives_and_quiet_time_forgets() -> None:
    clock = ManualClock()
    slowdown = LoginSlowdown(clock)
    for _ in range(FREE):
        _refused(slowdown, "alice", "2001:db8::1")
    assert _refused(slowdown, "carol", "2001:db8::ffff") is not None  # the same /64
    clock.advance(FORGET + timedelta(seconds=1))
    assert _refused(slowdown, "alice", "2001:db8::1") is None
    for _ in range(FREE - 1):
        _refused(slowdown, "alice", "10.1.1.1")
    slowdown.succeeded("alice", "10.1.1.1")
    assert [_refused(slowdown, "alice", "10.1.1.1") for _ in range(FREE)] == [None] * FREE


@pytest.mark.parametrize("address", [None, "not an address"])
def test_odd_addresses_still_count(address: str | None) -> None:
    slowdown = LoginSlowdown(ManualClock())
    for _ in range(FREE):
        _refused(slowdown, "x", address)
    assert _refused(slowdown, "y", address) is not None
