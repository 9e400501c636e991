"""ams.security.throttle: failed authentication counted per address and per key id, in
windows of a ManualClock (time moves, nothing sleeps)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from ams import apikeys, audit
from ams.apikeys import Role
from ams.clock import ManualClock
from ams.errors import AuthenticationRequired, DeviceTokenInvalid, RegistrationKeyInvalid, TooManyRequests
from ams.instance import Instance
from ams.security.throttle import LIMIT, WINDOW, AuthKind, AuthThrottle, address_key, write_summaries
from ams.vault import devices, regkeys

API = AuthKind.API_KEY
KEY = "ak_00000000000000aa"


def _fail(throttle: AuthThrottle, n: int, address: str = "192.0.2.1", key_id: str | None = None) -> list[str]:
    """n failures; what each was answered: recorded (401 + event), quiet (401), or 429."""
    out = []
    for _ in range(n):
        verdict = throttle.failure(API, address, key_id)
        out.append("429" if verdict.retry_after else "recorded" if verdict.record else "quiet")
    return out


def test_past_the_limit_an_address_is_throttled_and_its_window_is_summed(clock: ManualClock) -> None:
    throttle = AuthThrottle(clock)
    assert _fail(throttle, LIMIT) == ["recorded"] * LIMIT
    verdict = throttle.failure(API, "192.0.2.1", None)
    assert verdict.record is False and verdict.retry_after == WINDOW.total_seconds()
    assert _fail(throttle, 500) == ["429"] * 500
    assert _fail(throttle, 1, address="192.0.2.2") == ["recorded"]  # another address is not
    assert throttle.take_summaries() == []  # the window has not ended
    clock.advance(WINDOW)
    [summary] = throttle.take_summaries()
    assert (summary.by, summary.name) == ("address", "192.0.2.1")
    assert (summary.failures, summary.unrecorded) == (LIMIT + 501, 501)
    assert summary.kinds == {"api_key": LIMIT + 501}
    assert summary.window_end - summary.window_start == WINDOW
    assert throttle.take_summaries() == []


def test_a_throttled_address_stays_throttled_while_it_fails_then_is_released(clock: ManualClock) -> None:
    throttle = AuthThrottle(clock)
    _fail(throttle, LIMIT + 1)  # at 00:00:00, the start of a window
    # Failing on into the next windows: never another event of its own, one sum per window.
    for _ in range(3):
        clock.advance(WINDOW - timedelta(seconds=1))
        assert _fail(throttle, 1) == ["429"]
    # A whole window without a failure lifts it.
    clock.advance(WINDOW + timedelta(seconds=1))
    assert _fail(throttle, 1) == ["recorded"]
    assert [s.unrecorded for s in throttle.take_summaries()] == [2, 1, 1]


def test_an_ipv6_client_is_counted_by_its_64() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key(None) == "unknown"


def test_a_key_id_is_throttled_across_addresses_and_spraying_makes_no_buckets(clock: ManualClock) -> None:
    throttle = AuthThrottle(clock)
    for n in range(LIMIT):
        assert _fail(throttle, 1, address=f"198.51.100.{n}", key_id=KEY) == ["recorded"]
    assert _fail(throttle, 1, address="198.51.100.200", key_id=KEY) == ["429"]
    assert _fail(throttle, 1, address="198.51.100.200", key_id="ak_00000000000000bb") == ["recorded"]
    # One address spraying fresh ids: past its own limit it counts against itself only.
    for n in range(1000):
        throttle.failure(API, "203.0.113.9", f"ak_{n:016x}")
    assert len(throttle._buckets) < 2 * LIMIT + 20
    clock.advance(WINDOW)
    by_name = {s.name: s for s in throttle.take_summaries()}
    assert by_name[KEY].by == "key_id" and by_name[KEY].unrecorded == 1
    assert by_name[KEY].seen == [f"198.51.100.{n}" for n in range(5)]
    assert by_name["203.0.113.9"].unrecorded == 1000 - LIMIT


def test_what_one_window_may_write_is_bounded_whatever_the_addresses(clock: ManualClock) -> None:
    throttle = AuthThrottle(clock, max_recorded=20, max_summaries=3, max_buckets=100)
    answers = [
        a for n in range(200) for a in _fail(throttle, LIMIT + 2, address=f"10.0.{n // 250}.{n % 250}")
    ]
    assert answers.count("recorded") == 20
    assert answers.count("429") == 2 * 100  # the tracked addresses past their limit
    clock.advance(WINDOW)
    summaries = throttle.take_summaries()
    assert [s.by for s in summaries] == ["address"] * 3 + ["overflow"]
    assert sum(s.unrecorded for s in summaries) == answers.count("429") + answers.count("quiet")
    assert summaries[-1].merged == 97


def _events(instance: Instance, event: audit.Event) -> list[audit.EventRecord]:
    with instance.session() as session:
        return audit.list_events(session, event_id=int(event))


def test_bearer_tokens_through_the_service_valid_ones_always_pass(
    instance: Instance, clock: ManualClock
) -> None:
    admin = apikeys.create(instance, "ops", Role.ADMIN, actor="test")
    wrong = f"{admin.info.id}.not-the-secret"
    for _ in range(LIMIT):
        with pytest.raises(AuthenticationRequired):
            apikeys.authenticate(instance, wrong, Role.READER, address="192.0.2.1")
    for address in ("192.0.2.1", "192.0.2.99"):
        with pytest.raises(TooManyRequests) as raised:
            apikeys.authenticate(instance, wrong, Role.READER, address=address)
        assert raised.value.retry_after == WINDOW.total_seconds()
        # The key's holder is not locked out, from the attacker's address or another one.
        assert apikeys.authenticate(instance, admin.token, Role.ADMIN, address=address).id == admin.info.id
    # A secret pasted whole (no id) is counted, never stored.
    pasted = admin.secret
    with pytest.raises(TooManyRequests):
        apikeys.authenticate(instance, pasted, Role.READER, address="192.0.2.1")
    recorded = _events(instance, audit.Event.API_AUTH_FAILED)
    assert len(recorded) == LIMIT
    assert recorded[0].target == admin.info.id and recorded[0].details == {"address": "192.0.2.1"}
    clock.advance(WINDOW)
    assert write_summaries(instance) == 2
    summaries = {e.target: e for e in _events(instance, audit.Event.AUTH_FAILURES_THROTTLED)}
    assert summaries["192.0.2.1"].details["unrecorded"] == 2
    assert summaries["192.0.2.1"].details["key_ids"] == [admin.info.id]
    assert summaries[admin.info.id].details["addresses"] == ["192.0.2.1", "192.0.2.99"]
    with instance.session() as session:
        every = json.dumps([e.to_dict() for e in audit.list_events(session)])
    assert pasted not in every


def test_device_tokens_and_registration_keys_share_the_address_count(instance: Instance) -> None:
    key = regkeys.create(instance, "fleet", actor="test")
    device = devices.register(instance, key.key, "host-1", address="192.0.2.5")
    for n in range(LIMIT // 2):
        with pytest.raises(DeviceTokenInvalid):
            devices.authenticate(instance, f"{device.device_id}.wrong{n}", address="192.0.2.5")
        with pytest.raises(RegistrationKeyInvalid):
            devices.register(instance, f"{key.info.id}.wrong", "intruder", address="192.0.2.5")
    with pytest.raises(TooManyRequests):
        devices.authenticate(instance, f"{device.device_id}.wrong", address="192.0.2.5")
    with pytest.raises(TooManyRequests):
        devices.register(instance, "rk_0000000000000000.wrong", "intruder", address="192.0.2.5")
    assert devices.authenticate(instance, device.token, address="192.0.2.5").id == device.device_id
    assert devices.register(instance, key.key, "host-2", address="192.0.2.5").status == "active"
    assert len(_events(instance, audit.Event.DEVICE_AUTH_FAILED)) == LIMIT // 2
    assert len(_events(instance, audit.Event.DEVICE_REGISTRATION_REFUSED)) == LIMIT // 2
