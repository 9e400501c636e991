"""New device passwords, from the operating system's CSPRNG (``secrets``)."""

from __future__ import annotations

import secrets

__all__ = ["ALPHABET", "CLASSES", "MAX_LENGTH", "MIN_LENGTH", "generate_password"]

# No look-alikes (0/O/o, 1/l/I, 5/S, 2/Z, 8/B) so a password read off a screen is typed
# right; no quotes, backslash, colon or whitespace, which break shells, `chpasswd` lines and
# copy-and-paste.
CLASSES: tuple[str, ...] = (
    "ACDEFGHJKLMNPQRTUVWXY",
    "abcdefghijkmnpqrstuvwxyz",
    "34679",
    "!#$%&*+-=?@^_",
)
ALPHABET = "".join(CLASSES)
MIN_LENGTH = 8
MAX_LENGTH = 256


def generate_password(length: int) -> str:
    """A random password of ``length`` characters with at least one of every class.

    One character is drawn from each class, the rest from the whole alphabet, and the
    result is shuffled, so the guaranteed characters do not sit at known places.
    """
    if not MIN_LENGTH <= length <= MAX_LENGTH:
        raise ValueError(f"password length must be {MIN_LENGTH}-{MAX_LENGTH}, not {length}")
    chars = [secrets.choice(cls) for cls in CLASSES]
    chars += [secrets.choice(ALPHABET) for _ in range(length - len(chars))]
    secrets.SystemRandom().shuffle(chars)
    return "".join(chars)
