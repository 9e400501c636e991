from __future__ import annotations

import pytest

from ams import crypto
from ams.errors import WeakPassword
from ams.security import check_password_strength


@pytest.mark.parametrize(
    "password",
    [
        "short1!",
        "password1234",
        "Password2024!",
        "qwertyuiop123",
        "aaaaaaaaaaaaaaaa",
        "abababababababab",
        "1234567890123",
        "letmeinletmein",
        "Administrator1",
    ],
)
def test_weak_passwords_are_refused_with_the_rule(password: str) -> None:
    with pytest.raises(WeakPassword) as err:
        check_password_strength(password, "recovery password")
    assert "at least 12 characters" in err.value.message
    assert password not in err.value.message


@pytest.mark.parametrize("password", ["Tangerine-Orbit-Lantern-4471", "correct-Horse-battery-staple-91"])
def test_strong_passwords_pass(password: str) -> None:
    check_password_strength(password)


def test_generated_passwords_pass() -> None:
    for _ in range(20):
        check_password_strength(crypto.generate_recovery_password())
