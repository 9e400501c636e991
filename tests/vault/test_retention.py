"""History retention with the moved clock: a password goes only when BOTH limits are exceeded."""

from __future__ import annotations

import secrets
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from ams import audit
from ams.clock import ManualClock
from ams.db.models.vault import DevicePassword
from ams.instance import Instance
from ams.vault import devices, passwords, policy, regkeys
from ams.vault.devices import AuthenticatedDevice
from vault_support import _small_keys, make_blob  # noqa: F401 - _small_keys is a fixture


def _device(instance: Instance, name: str) -> AuthenticatedDevice:
    key = regkeys.create(instance, f"rk-{name}", "test")
    registered = devices.register(instance, key.key, name)
    return devices.authenticate(instance, registered.token)


def _rotate(instance: Instance, device: AuthenticatedDevice, version: int | None) -> int:
    """One check-in that rotates, as the agent does it; the new version."""
    advice = passwords.decide(instance, device, version)
    assert advice.reason in ("new", "expired", "forced"), advice
    blob = make_blob(advice.certificate_pem, "Administrator", secrets.token_urlsafe(12), advice.next_version)
    return passwords.store(instance, device, "Administrator", advice.next_version, blob).version


def _history(instance: Instance, device_id: str) -> list[int]:
    with instance.session() as session:
        return list(
            session.scalars(
                select(DevicePassword.version)
                .where(DevicePassword.device_id == device_id, DevicePassword.is_current.is_(False))
                .order_by(DevicePassword.version)
            )
        )


def _rotate_daily_for_a_year(instance: Instance, clock: ManualClock, device: AuthenticatedDevice) -> int:
    """Passwords live one day (the policy), so each daily check-in rotates with reason "expired"."""
    version = _rotate(instance, device, None)
    for _ in range(365):
        clock.advance(timedelta(days=1))
        version = _rotate(instance, device, version)
    return version


def test_keep_5_passwords_or_365_days_keeps_a_year(instance: Instance, clock: ManualClock) -> None:
    policy.set_policy(instance, "agent", "test", history_keep_count=5, history_keep_days=365, max_age_days=1)
    device = _device(instance, "daily")
    last = _rotate_daily_for_a_year(instance, clock, device)
    assert last == 366
    # Every password superseded within the last 365 days stays, though far more than 5.
    assert _history(instance, device.id) == list(range(1, 366))
    assert audit.Event.PASSWORD_HISTORY_PRUNED not in _event_ids(instance)

    # Version 1 left service on day 1. A year later it is exactly 365 days old: kept.
    clock.advance(timedelta(days=1))
    last = _rotate(instance, device, last)
    assert _history(instance, device.id) == list(range(1, 367))
    # A day later version 1 left service 366 days ago: beyond both limits, it goes.
    clock.advance(timedelta(days=1))
    _rotate(instance, device, last)
    assert _history(instance, device.id) == list(range(2, 368))


def test_keep_7_passwords_or_1_day_keeps_7(instance: Instance, clock: ManualClock) -> None:
    policy.set_policy(instance, "agent", "test", history_keep_count=7, history_keep_days=1, max_age_days=1)
    device = _device(instance, "daily")
    last = _rotate_daily_for_a_year(instance, clock, device)
    assert _history(instance, device.id) == list(range(last - 7, last))
    with instance.session() as session:
        pruned = audit.list_events(session, event_id=audit.Event.PASSWORD_HISTORY_PRUNED)
        total = session.scalar(select(func.count()).select_from(DevicePassword))
    assert total == 8  # 7 history + the current one
    assert sum(len(e.details["versions"]) for e in pruned) == last - 8
    assert all(e.target == device.id for e in pruned)


@pytest.mark.parametrize(
    ("keep_count", "keep_days", "kept"),
    [
        (30, 0, 10),  # the defaults: 10 superseded, all under the count
        (3, 0, 3),  # count exceeded and no days to keep
        (3, 100, 10),  # count exceeded but every one within the days
        (0, 0, 0),
    ],
)
def test_both_limits_must_be_exceeded(
    instance: Instance, clock: ManualClock, keep_count: int, keep_days: int, kept: int
) -> None:
    policy.set_policy(instance, "agent", "test", history_keep_count=keep_count, history_keep_days=keep_days)
    device = _device(instance, "h")
    version = _rotate(instance, device, None)
    for _ in range(10):
        clock.advance(timedelta(days=2))
        devices.expire(instance, "test", device=device.id)
        version = _rotate(instance, device, version)
    # Retention runs after each new password; one inside the rollback window is never removed,
    # so the last superseded password survives until the next rotation (or the window's end).
    expected = kept if kept else 1
    assert len(_history(instance, device.id)) == expected


def test_the_password_an_undo_needs_is_never_removed(instance: Instance, clock: ManualClock) -> None:
    policy.set_policy(instance, "agent", "test", history_keep_count=0, history_keep_days=0)
    device = _device(instance, "h")
    _rotate(instance, device, None)
    clock.advance(timedelta(days=1))
    devices.expire(instance, "test", device=device.id)
    advice = passwords.decide(instance, device, 1)
    blob = make_blob(advice.certificate_pem, "Administrator", "Not-set-on-device-1", 2)
    stored = passwords.store(instance, device, "Administrator", 2, blob)
    clock.advance(timedelta(seconds=30))
    assert passwords.undo(instance, device, stored.request_id) == 1


def _event_ids(instance: Instance) -> set[int]:
    with instance.session() as session:
        return {e.event_id for e in audit.list_events(session, limit=100000)}
