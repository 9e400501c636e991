"""The one clock AMS reads time from.

Everything time-based (audit timestamps, password expiry, history retention, backup
schedules, snapshot age) asks a :class:`Clock`, so tests can move time instead of
sleeping. Times are always timezone-aware UTC.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Protocol

from ams.errors import BadInput

__all__ = ["Clock", "ManualClock", "SystemClock", "as_utc", "clock_from_env", "parse_since", "utcnow"]


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    """The real time, optionally shifted by a fixed offset."""

    def __init__(self, offset: timedelta = timedelta(0)) -> None:
        self.offset = offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


class ManualClock:
    """A clock that only moves when told to; for tests."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        if self._now.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start time")

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta

    def set(self, when: datetime) -> None:
        self._now = when


def clock_from_env() -> Clock:
    """The system clock, shifted by ``AMS_CLOCK_OFFSET_SECONDS`` when set.

    The offset exists so end-to-end tests can run the real ``ams`` and ``ams serve``
    processes "in the future" (expiry, retention, the 180-day snapshot rule) without
    waiting. ``ams serve`` logs it at start so it is never a silent surprise; a value that
    is not a number is refused rather than ignored.
    """
    raw = os.environ.get("AMS_CLOCK_OFFSET_SECONDS", "").strip()
    if not raw:
        return SystemClock()
    try:
        return SystemClock(timedelta(seconds=float(raw)))
    except (ValueError, OverflowError):
        raise BadInput(
            f"AMS_CLOCK_OFFSET_SECONDS={raw!r} is not a number of seconds: fix or unset it"
        ) from None


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Databases hand back naive datetimes (SQLite) or aware ones; make them aware UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: datetime) -> datetime:
    """``7d``, ``12h``, ``30m`` (before ``now``) or an ISO 8601 date or time (UTC if naive)."""
    text = text.strip()
    if len(text) >= 2 and text[-1] in _UNITS and text[:-1].isdigit():
        return now - timedelta(seconds=int(text[:-1]) * _UNITS[text[-1]])
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (7d, 12h, 30m) nor an ISO date (2026-11-01)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
