"""Failed authentication, throttled per client address and per key id.

Every failed bearer token, device token, registration key and SigV4 key used to write one
audit row, so an unauthenticated client could grow the database (and every backup) at
will. Now each failure is counted, in fixed windows of :data:`WINDOW`, against the
client's address (an IPv6 address by its /64) and against the key id it presented:

- the first :data:`LIMIT` failures of an address (and of a key id) in a window are recorded
  one event each, as before (1202, 1403, 1406), the address in their details;
- past the limit the address (or key id) is throttled: its failures answer 429 with
  ``Retry-After`` and write nothing, until a whole window has passed without one;
- what was not recorded is summed into one event 1203 per address (or key id) and window,
  written when the window has ended (by the request that starts the next one, by the
  service's audit job, or when the service stops).

A valid credential is never refused by the throttle, wherever it comes from: the throttle
only decides how a failure is answered and recorded. A success does not reset a counter.
The state is in this process's memory; the workers of ``ams serve --workers N`` share one
(ams.security.shared; docs/security.md says what that means).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NoReturn

from ams import audit
from ams.clock import Clock
from ams.errors import TooManyRequests

if TYPE_CHECKING:
    from ams.instance import Instance

__all__ = ["LIMIT", "WINDOW", "AuthKind", "AuthThrottle", "Summary", "Verdict", "address_key", "refuse"]

log = logging.getLogger("ams.security")

# Failures of one address, or of one key id, in one window before it is throttled.
LIMIT = 10
WINDOW = timedelta(minutes=5)
# Bounds on what one window may cost, whatever the number of attackers: addresses and key
# ids tracked, failures recorded one event each, and 1203 events (the rest are merged).
MAX_BUCKETS = 10_000
MAX_RECORDED = 200
MAX_SUMMARIES = 100
# How many key ids (for an address) or addresses (for a key id) a summary names.
_SEEN = 5
# Only what has the shape of an AMS id gets a bucket of its own and a place in an event: a
# secret pasted into the id position never does.
_ID_SHAPE = re.compile(r"^(ak|dev|rk)_[0-9a-f]{16}$")


class AuthKind(StrEnum):
    API_KEY = "api_key"
    DEVICE_TOKEN = "device_token"  # noqa: S105 - the name of a kind of credential
    REGISTRATION_KEY = "registration_key"
    SIGV4 = "sigv4"
    CONSOLE_LOGIN = "console_login"
    LDAP_BIND = "ldap_bind"


def address_key(address: str | None) -> str:
    """The bucket of a client address: the address, or for IPv6 its /64 network."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass(frozen=True)
class Verdict:
    """How to answer one failure: record it as its own event or not; 429 or not."""

    record: bool
    retry_after: int | None = None


@dataclass(frozen=True)
class Summary:
    """One 1203 event: the failures of one address or key id in one window."""

    by: str  # "address", "key_id", or "overflow" (past MAX_BUCKETS/MAX_RECORDED/MAX_SUMMARIES)
    name: str | None
    failures: int
    unrecorded: int
    window_start: datetime
    window_end: datetime
    kinds: dict[str, int]
    seen: list[str]
    merged: int = 0  # for "overflow": addresses and key ids merged in past MAX_SUMMARIES

    def details(self) -> dict[str, Any]:
        details: dict[str, Any] = {
            "by": self.by,
            "failures": self.failures,
            "unrecorded": self.unrecorded,
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
            "kinds": self.kinds,
        }
        if self.by == "address":
            details["key_ids"] = self.seen
        elif self.by == "key_id":
            details["addresses"] = self.seen
        else:
            details["merged"] = self.merged
        return details


@dataclass
class _Bucket:
    by: str
    name: str
    failures: int = 0
    unrecorded: int = 0
    throttled_until: datetime | None = None
    kinds: Counter[str] = field(default_factory=Counter)
    seen: list[str] = field(default_factory=list)

    def count(self, kind: str, other: str | None) -> None:
        self.failures += 1
        self.kinds[kind] += 1
        if other and other not in self.seen and len(self.seen) < _SEEN:
            self.seen.append(other)

    def throttled(self, now: datetime, limit: int) -> bool:
        return self.failures > limit or (self.throttled_until is not None and self.throttled_until > now)


class AuthThrottle:
    """The failure counters of one process. Thread-safe: requests run in a thread pool."""

    def __init__(
        self,
        clock: Clock,
        *,
        limit: int = LIMIT,
        window: timedelta = WINDOW,
        max_buckets: int = MAX_BUCKETS,
        max_recorded: int = MAX_RECORDED,
        max_summaries: int = MAX_SUMMARIES,
    ) -> None:
        self.clock = clock
        self.limit = limit
        self.window = window
        self.max_buckets = max_buckets
        self.max_recorded = max_recorded
        self.max_summaries = max_summaries
        self._lock = threading.Lock()
        self._index: int | None = None
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._overflow = _Bucket("overflow", "")
        self._recorded = 0
        self._pending: list[Summary] = []
        # (kind, answer) -> failures since start; answer is recorded, unrecorded or throttled.
        self.totals: Counter[tuple[str, str]] = Counter()

    # -- one failure ----------------------------------------------------------------------

    def failure(self, kind: AuthKind, address: str | None, key_id: str | None) -> Verdict:
        """Count one failed authentication and say how to answer it."""
        now = self.clock.now()
        shaped = key_id if key_id and _ID_SHAPE.match(key_id) else None
        with self._lock:
            self._roll(now)
            addr = self._bucket("address", address_key(address))
            if addr is not None and addr.throttled(now, self.limit):
                # A throttled address counts against itself only: one address spraying key
                # ids creates no key buckets past its first LIMIT failures.
                addr.count(kind, shaped)
                over = [addr]
            else:
                key = self._bucket("key_id", shaped) if shaped else None
                counted = [b for b in (addr, key) if b is not None]
                for bucket in counted:
                    bucket.count(kind, (address_key(address) if bucket is key else shaped))
                over = [b for b in counted if b.throttled(now, self.limit)]
            if over:
                until = now + self.window
                for bucket in over:
                    bucket.throttled_until = until
                over[0].unrecorded += 1
                self.totals[(str(kind), "throttled")] += 1
                return Verdict(record=False, retry_after=max(1, math.ceil(self.window.total_seconds())))
            if addr is None or self._recorded >= self.max_recorded:
                self._overflow.count(kind, None)
                self._overflow.unrecorded += 1
                self.totals[(str(kind), "unrecorded")] += 1
                return Verdict(record=False)
            self._recorded += 1
            self.totals[(str(kind), "recorded")] += 1
            return Verdict(record=True)

    def _bucket(self, by: str, name: str) -> _Bucket | None:
        bucket = self._buckets.get((by, name))
        if bucket is None and len(self._buckets) < self.max_buckets:
            bucket = self._buckets[(by, name)] = _Bucket(by, name)
        return bucket

    # -- windows and their summaries ------------------------------------------------------

    def _window_start(self, index: int) -> datetime:
        return datetime.fromtimestamp(index * self.window.total_seconds(), UTC)

    def _roll(self, now: datetime, *, close: bool = False) -> None:
        """Start a new window when ``now`` is past the current one (or ``close``)."""
        index = math.floor(now.timestamp() / self.window.total_seconds())
        if self._index is None:
            self._index = index
        if index == self._index and not close:
            return
        start = self._window_start(self._index)
        end = now if close and index == self._index else start + self.window
        self._pending.extend(self._summaries(start, end))
        self._index = index
        self._recorded = 0
        self._overflow = _Bucket("overflow", "")
        # Only a throttled bucket outlives its window: it stays throttled while it fails.
        kept: dict[tuple[str, str], _Bucket] = {}
        for key, bucket in self._buckets.items():
            if bucket.throttled_until is not None and bucket.throttled_until > now:
                kept[key] = _Bucket(bucket.by, bucket.name, throttled_until=bucket.throttled_until)
        self._buckets = kept

    def _summaries(self, start: datetime, end: datetime) -> list[Summary]:
        busy = sorted(
            (b for b in self._buckets.values() if b.unrecorded),
            key=lambda b: (-b.unrecorded, b.by, b.name),
        )
        out = [
            Summary(b.by, b.name, b.failures, b.unrecorded, start, end, dict(b.kinds), list(b.seen))
            for b in busy[: self.max_summaries]
        ]
        rest = busy[self.max_summaries :]
        overflow = self._overflow
        for bucket in rest:
            overflow.failures += bucket.failures
            overflow.unrecorded += bucket.unrecorded
            overflow.kinds.update(bucket.kinds)
        if overflow.unrecorded:
            out.append(
                Summary(
                    "overflow",
                    None,
                    overflow.failures,
                    overflow.unrecorded,
                    start,
                    end,
                    dict(overflow.kinds),
                    [],
                    merged=len(rest),
                )
            )
        return out

    def take_summaries(self, *, close: bool = False) -> list[Summary]:
        """The summaries of the windows that have ended; ``close`` ends the current one too
        (when the service stops)."""
        with self._lock:
            self._roll(self.clock.now(), close=close)
            pending, self._pending = self._pending, []
            return pending

    def counts(self) -> dict[tuple[str, str], int]:
        """Failures since start by (kind, answer): a counter of /metrics."""
        with self._lock:
            return dict(self.totals)

    def throttled_buckets(self) -> int:
        """Addresses and key ids throttled right now (a gauge of /metrics)."""
        now = self.clock.now()
        with self._lock:
            return sum(1 for b in self._buckets.values() if b.throttled(now, self.limit))


# -- what the services call ---------------------------------------------------------------


def _record_summaries(session: Any, clock: Clock, summaries: list[Summary]) -> None:
    for summary in summaries:
        audit.record(
            session,
            clock,
            audit.Event.AUTH_FAILURES_THROTTLED,
            actor="api",
            outcome="failure",
            target=summary.name,
            details=summary.details(),
        )


def write_summaries(instance: Instance, *, close: bool = False) -> int:
    """Write the 1203 events of the windows that have ended; how many were written."""
    summaries = instance.auth_throttle.take_summaries(close=close)
    if summaries:
        with instance.transaction() as session:
            _record_summaries(session, instance.clock, summaries)
    return len(summaries)


def refuse(
    instance: Instance,
    kind: AuthKind,
    *,
    address: str | None,
    key_id: str | None,
    event: audit.Event,
    target: str | None,
    details: dict[str, Any] | None = None,
    error: Exception,
    actor: str = "api",
) -> NoReturn:
    """Answer one failed authentication: record it (or count it into its window's 1203
    event), then raise ``error``, or :class:`TooManyRequests` while throttled.

    ``key_id`` is the id the client presented (used for counting only); ``target`` is what
    the event may name (the id when it exists).
    """
    verdict = instance.auth_throttle.failure(kind, address, key_id)
    # For `ams serve --log-level debug`: why a client was refused. The key id only when it has
    # the shape of one (a secret pasted into the id position is never logged), never a secret.
    log.debug(
        "failed %s authentication from %s (key id %s): %s (%s)",
        kind,
        address_key(address),
        key_id if key_id and _ID_SHAPE.match(key_id) else "-",
        "throttled" if verdict.retry_after is not None else "recorded" if verdict.record else "counted",
        getattr(error, "code", type(error).__name__),
    )
    summaries = instance.auth_throttle.take_summaries()
    if verdict.record or summaries:
        with instance.transaction() as session:
            if verdict.record:
                audit.record(
                    session,
                    instance.clock,
                    event,
                    actor=actor,
                    outcome="failure",
                    target=target,
                    details={**(details or {}), "address": address or "unknown"},
                )
            _record_summaries(session, instance.clock, summaries)
    if verdict.retry_after is not None:
        raise TooManyRequests(
            "too many failed authentications from this address or for this key id: "
            f"retry after {verdict.retry_after} seconds with a valid credential",
            retry_after=verdict.retry_after,
        )
    raise error
