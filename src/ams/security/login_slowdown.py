"""Failed console logins slow the next ones, per user name and per client address.

Console passwords are chosen by people, so unlike API keys and device tokens (256 random
bits, ams.security.throttle) they can be guessed, and a wrong guess must cost time. After
:data:`FREE` failures for one name (or from one address), each further attempt has to wait
``2 ** (failures - FREE)`` seconds after the last failure, at most :data:`MAX_WAIT`; an
attempt inside the wait is refused with 429 and ``Retry-After`` before the password is
even checked (and costs no Argon2 work). A failure count starts afresh after
:data:`FORGET` without a failure, and a successful login clears the count of its name and
of its address.

The wait is capped, not a lock-out: an attacker who knows an administrator's name can slow
that administrator's logins to one try every :data:`MAX_WAIT`, never forbid them. The state
is in this process's memory, like the failed-authentication throttle (docs/security.md).
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
        return ("name", name.lower()[:64]), ("address", address_key(address))

    def _wait(self, count: _Count | None, now: datetime) -> timedelta:
        if count is None or count.failures < FREE or now - count.last > FORGET:
            return timedelta(0)
        wait = min(MAX_WAIT, timedelta(seconds=2 ** min(count.failures - FREE, 16)))
        return max(timedelta(0), count.last + wait - now)

    def check(self, name: str, address: str | None) -> None:
        """Refuse (429) an attempt that comes before its wait is over."""
        now = self.clock.now()
        with self._lock:
            wait = max(self._wait(self._counts.get(key), now) for key in self._keys(name, address))
        if wait > timedelta(0):
            seconds = max(1, math.ceil(wait.total_seconds()))
            raise TooManyRequests(
                f"too many failed logins for this user or from this address: try again in {seconds} seconds",
                retry_after=seconds,
            )

    def failed(self, name: str, address: str | None) -> None:
        now = self.clock.now()
        with self._lock:
            for key in self._keys(name, address):
                count = self._counts.get(key)
                if count is None or now - count.last > FORGET:
                    count = self._counts[key] = _Count(0, now)
                count.failures += 1
                count.last = now
            if len(self._counts) > _MAX_KEYS:
                for key, _ in sorted(self._counts.items(), key=lambda kv: kv[1].last)[
                    : len(self._counts) // 10
                ]:
                    del self._counts[key]

    def succeeded(self, name: str, address: str | None) -> None:
        with self._lock:
            for key in self._keys(name, address):
                self._counts.pop(key, None)
