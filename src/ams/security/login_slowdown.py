"""Failed console logins slow the next ones from the same client address.

Console passwords are chosen by people, so unlike API keys and device tokens (256 random
bits, ams.security.throttle) they can be guessed, and a wrong guess must cost time. Two
counts are kept: one per client address (an IPv6 client by its /64), and one per user name
*from* that address. After :data:`FREE` failures in either, each further attempt has to
wait ``2 ** (failures - FREE)`` seconds after the last one, at most :data:`MAX_WAIT`; an
attempt inside the wait is refused with 429 and ``Retry-After`` before the password is even
checked (so it costs no Argon2 work). A count starts afresh after :data:`FORGET` without a
failure, and a successful login clears the counts of its name and address.

There is deliberately no count per name alone: it would let anyone who knows an
administrator's name keep that administrator out by failing on purpose from elsewhere.
An attacker is slowed where the attacker is. Each attempt is counted *before* its password
is checked (and forgiven when it succeeds), so parallel attempts cannot all pass the check
while the slow hashes run. The state is in this process's memory, like the
failed-authentication throttle; the workers of ``ams serve --workers N`` share one
(ams.security.shared, docs/security.md).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from ams.clock import Clock
from ams.errors import TooManyRequests
from ams.security.throttle import address_key

__all__ = ["FORGET", "FREE", "MAX_WAIT", "LoginSlowdown"]

FREE = 5
MAX_WAIT = timedelta(minutes=5)
FORGET = timedelta(minutes=30)
# Names and addresses remembered at once; the quietest are forgotten first past it.
_MAX_KEYS = 10_000


@dataclass
class _Count:
    failures: int
    last: datetime


class LoginSlowdown:
    """The failure counts of one process. Thread-safe: logins run in a thread pool."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._counts: dict[tuple[str, str], _Count] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _keys(name: str, address: str | None) -> tuple[tuple[str, str], tuple[str, str]]:
        where = address_key(address)
        return ("name@address", f"{name.lower()[:64]}@{where}"), ("address", where)

    def _wait(self, count: _Count | None, now: datetime) -> timedelta:
        if count is None or count.failures < FREE or now - count.last > FORGET:
            return timedelta(0)
        wait = min(MAX_WAIT, timedelta(seconds=2 ** min(count.failures - FREE, 16)))
        return max(timedelta(0), count.last + wait - now)

    def attempt(self, name: str, address: str | None) -> float:
        """Count one attempt as a failure and answer 0, unless it comes inside a wait: then
        the seconds left to wait, and nothing is counted. (What a worker of ``ams serve
        --workers N`` asks the shared process, ams.security.shared.)"""
        now = self.clock.now()
        with self._lock:
            keys = self._keys(name, address)
            wait = max(self._wait(self._counts.get(key), now) for key in keys)
            if wait <= timedelta(0):
                for key in keys:
                    count = self._counts.get(key)
                    if count is None or now - count.last > FORGET:
                        count = self._counts[key] = _Count(0, now)
                    count.failures += 1
                    count.last = now
                if len(self._counts) > _MAX_KEYS:
                    quietest = sorted(self._counts.items(), key=lambda kv: kv[1].last)
                    for key, _ in quietest[: len(self._counts) // 10]:
                        del self._counts[key]
                return 0.0
        return wait.total_seconds()

    def begin(self, name: str, address: str | None) -> None:
        """Count one attempt as a failure, unless it comes inside a wait (then 429, uncounted).

        :meth:`succeeded` forgives it when the password was right.
        """
        wait = self.attempt(name, address)
        if wait <= 0:
            return
        seconds = max(1, math.ceil(wait))
        raise TooManyRequests(
            f"too many failed logins from this address: try again in {seconds} seconds",
            retry_after=seconds,
        )

    def succeeded(self, name: str, address: str | None) -> None:
        with self._lock:
            for key in self._keys(name, address):
                self._counts.pop(key, None)
