"""Rules for passwords people choose (the recovery password, PFX export passwords).

No composition rules (they make passwords harder to remember, not to guess): a minimum
length, a deny-list of common passwords and their obvious variants, and a floor on the
variety of characters. The rule is said in full whenever a password is refused.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from ams.errors import WeakPassword

__all__ = ["MIN_PASSWORD_LENGTH", "check_password_strength", "password_rule"]

MIN_PASSWORD_LENGTH = 12
_DENYLIST = Path(__file__).with_name("denylist.txt")


def password_rule(what: str) -> str:
    return (
        f"the {what} must have at least {MIN_PASSWORD_LENGTH} characters, at least 6 different "
        "ones, and must not be a common password or a keyboard or number sequence"
    )


@cache
def _denied() -> frozenset[str]:
    words = set()
    for line in _DENYLIST.read_text(encoding="utf-8").splitlines():
        line = line.strip().lower()
        if line and not line.startswith("#"):
            words.add(line)
    return frozenset(words)


_SEQUENCES = (
    "abcdefghijklmnopqrstuvwxyz",
    "qwertyuiopasdfghjklzxcvbnm",
    "qwertzuiopasdfghjklyxcvbnm",
    "azertyuiopqsdfghjklmwxcvbn",
    "01234567890",
    "1qaz2wsx3edc4rfv5tgb",
)


def _is_sequence(core: str) -> bool:
    if len(core) < 4:
        return False
    return any(core in seq * 3 or core in (seq * 3)[::-1] for seq in _SEQUENCES)


def _is_repetition(text: str) -> bool:
    return any(
        len(text) % size == 0 and text == text[:size] * (len(text) // size)
        for size in range(1, len(text) // 2 + 1)
    )


def _core(password: str) -> str:
    """The password lowered, with the digits and symbols people pad words with removed."""
    lowered = password.lower()
    stripped = re.sub(r"^[\d\W_]+|[\d\W_]+$", "", lowered)
    return stripped or lowered


def check_password_strength(password: str, what: str = "password") -> None:
    """Raise :class:`WeakPassword` with the whole rule when ``password`` breaks it."""
    problem: str | None = None
    if len(password) < MIN_PASSWORD_LENGTH:
        problem = f"it has {len(password)} characters"
    elif len(set(password)) < 6:
        problem = "it repeats too few different characters"
    elif _is_repetition(password.lower()):
        problem = "it repeats a shorter password"
    else:
        lowered = password.lower()
        core = _core(password)
        denied = _denied()
        if lowered in denied or core in denied or _is_sequence(lowered) or _is_sequence(core):
            problem = "it is a common password"
        else:
            # A deny-listed word repeated or padded ("password2024!", "letmeinletmein").
            for word in denied:
                if len(word) >= 6 and word in lowered and len(lowered) - len(word) <= 5:
                    problem = f"it is built on the common password {word!r}"
                    break
    if problem:
        raise WeakPassword(f"{what} refused, {problem}: {password_rule(what)}")
