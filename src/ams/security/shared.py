"""The failed-authentication throttle and the login slowdown, shared by the workers of one
``ams serve``.

With ``--workers N`` the requests of one client may land on any of N processes; counters
kept in each process's memory would let a guesser try N times as often. So the supervising
process (:mod:`ams.api.supervisor`) starts one small server process (a
:class:`multiprocessing.managers.BaseManager`, on a private Unix socket under a random
authentication key, created before the workers are forked) that holds the one
:class:`~ams.security.throttle.AuthThrottle` and the one
:class:`~ams.security.login_slowdown.LoginSlowdown`; each worker talks to them through
proxies. Only failures and console logins cross that socket: a valid credential never does.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from datetime import timedelta
from multiprocessing.managers import BaseManager, BaseProxy
from typing import Any

from ams.clock import Clock
from ams.errors import TooManyRequests
from ams.security.login_slowdown import LoginSlowdown
from ams.security.throttle import AuthKind, AuthThrottle, Summary, Verdict

__all__ = ["SharedCounters", "SharedLoginSlowdown", "SharedThrottle"]


class _Manager(BaseManager):
    pass


_throttle: AuthThrottle | None = None
_slowdown: LoginSlowdown | None = None


def _the_throttle() -> AuthThrottle:
    assert _throttle is not None
    return _throttle


def _the_slowdown() -> LoginSlowdown:
    assert _slowdown is not None
    return _slowdown


_Manager.register(
    "throttle", callable=_the_throttle, exposed=("failure", "take_summaries", "counts", "throttled_buckets")
)
_Manager.register("slowdown", callable=_the_slowdown, exposed=("attempt", "succeeded"))


class SharedThrottle:
    """An :class:`AuthThrottle` kept in the shared-state process (same methods)."""

    def __init__(self, proxy: BaseProxy) -> None:
        self._proxy: Any = proxy

    def failure(self, kind: AuthKind, address: str | None, key_id: str | None) -> Verdict:
        verdict: Verdict = self._proxy.failure(kind, address, key_id)
        return verdict

    def take_summaries(self, *, close: bool = False) -> list[Summary]:
        summaries: list[Summary] = self._proxy.take_summaries(close=close)
        return summaries

    def counts(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = self._proxy.counts()
        return counts

    def throttled_buckets(self) -> int:
        return int(self._proxy.throttled_buckets())


class SharedLoginSlowdown:
    """A :class:`LoginSlowdown` kept in the shared-state process (same methods)."""

    def __init__(self, proxy: BaseProxy) -> None:
        self._proxy: Any = proxy

    def begin(self, name: str, address: str | None) -> None:
        wait = timedelta(seconds=float(self._proxy.attempt(name, address)))
        if wait > timedelta(0):
            seconds = max(1, math.ceil(wait.total_seconds()))
            raise TooManyRequests(
                f"too many failed logins from this address: try again in {seconds} seconds",
                retry_after=seconds,
            )

    def succeeded(self, name: str, address: str | None) -> None:
        self._proxy.succeeded(name, address)


class SharedCounters:
    """The shared-state process: started by the supervisor before it forks the workers;
    each worker calls :meth:`connect` after the fork for proxies of its own."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._authkey = os.urandom(32)
        self._manager: _Manager | None = None
        self.address: Any = None

    def start(self, initializer: Callable[[], None] | None = None) -> None:
        global _throttle, _slowdown
        # The fork of the manager's process inherits these two objects, created here.
        _throttle = AuthThrottle(self._clock)
        _slowdown = LoginSlowdown(self._clock)
        manager = _Manager(authkey=self._authkey)
        manager.start(initializer)
        self._manager = manager
        self.address = manager.address

    def connect(self) -> tuple[SharedThrottle, SharedLoginSlowdown]:
        """Proxies for this process (call it after the fork, once per worker)."""
        manager = _Manager(address=self.address, authkey=self._authkey)
        manager.connect()
        proxies: Any = manager
        return SharedThrottle(proxies.throttle()), SharedLoginSlowdown(proxies.slowdown())

    def stop(self) -> None:
        if self._manager is not None:
            self._manager.shutdown()
            self._manager = None
