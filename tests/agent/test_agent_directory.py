"""ams-agent's directory mode: when its computer object says to rotate, and its LDAP address."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ams.agent.directory import DirectoryObject, check_ldap_url
from ams.errors import BadInput
from ams.laps import from_filetime, to_filetime

NOW = datetime(2026, 12, 4, 8, 0, tzinfo=UTC)


def test_filetime_is_windows_100ns_since_1601() -> None:
    # The Unix epoch is FILETIME 116444736000000000 (the constant every Windows port uses).
    expected = 116444736000000000 + int(NOW.timestamp()) * 10_000_000
    assert to_filetime(NOW) == expected
    assert to_filetime(datetime(1970, 1, 1, tzinfo=UTC)) == 116444736000000000
    assert from_filetime(expected) == NOW
    assert from_filetime(0) is None


@pytest.mark.parametrize(
    ("has_password", "expiration", "reason"),
    [
        (False, None, "new"),
        (False, to_filetime(NOW + timedelta(days=9)), "new"),
        (True, 0, "forced"),
        (True, None, "expired"),
        (True, to_filetime(NOW - timedelta(seconds=1)), "expired"),
        (True, to_filetime(NOW), "expired"),
        (True, to_filetime(NOW + timedelta(days=1)), None),
    ],
)
def test_the_object_decides_when_to_rotate(
    has_password: bool, expiration: int | None, reason: str | None
) -> None:
    assert DirectoryObject(has_password, expiration).due(NOW) == reason


def test_ldap_addresses() -> None:
    assert check_ldap_url("ldap://ams.example.com:3389/") == "ldap://ams.example.com:3389"
    assert check_ldap_url(" ldaps://10.0.0.1 ") == "ldaps://10.0.0.1"
    for bad in ("http://ams.example.com", "ldap://", "ldap://host:port", "ldap://host/dc=x", "host:389"):
        with pytest.raises(BadInput):
            check_ldap_url(bad)
