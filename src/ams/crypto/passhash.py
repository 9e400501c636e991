"""Hashes of passwords that people choose (console users): Argon2id, verified in constant time.

argon2-cffi's ``PasswordHasher`` writes the PHC string (``$argon2id$v=19$m=…,t=…,p=…$salt$hash``)
that carries its own parameters, so a hash made today still verifies after the defaults
change, and ``needs_rehash`` says when a login should store a stronger one.
"""

from __future__ import annotations

import functools

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["hash_password", "needs_rehash", "verify_password"]

# 64 MiB, t=3: the same floor as the recovery password's key derivation. A login costs
# about 0.1 s of one core, which also slows guessing on its own.
_HASHER = PasswordHasher(time_cost=3, memory_cost=65536, parallelism=1)


@functools.cache
def _dummy_hash() -> str:
    return _HASHER.hash("an unknown user never logs in")


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """True when ``password`` matches ``stored``. ``None`` (no such user) costs the same and
    is False, so the time of an answer does not tell whether the user exists."""
    try:
        return _HASHER.verify(_dummy_hash() if stored is None else stored, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    try:
        return _HASHER.check_needs_rehash(stored)
    except InvalidHashError:
        return True
