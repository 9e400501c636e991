"""Random identifiers, secrets and their constant-time checks."""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = [
    "constant_time_equal",
    "generate_recovery_password",
    "hash_token",
    "random_id",
    "random_secret",
    "sign_token",
]

# Crockford-like alphabet: no 0/O, 1/I/L confusion when a person copies it from paper.
_RECOVERY_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"


def random_secret(nbytes: int = 32) -> str:
    """A URL-safe random secret carrying ``nbytes`` of entropy."""
    return secrets.token_urlsafe(nbytes)


def random_id(nhex: int) -> str:
    """``nhex`` random lowercase hex digits (for ids such as ``d-`` + 10 hex)."""
    return secrets.token_hex((nhex + 1) // 2)[:nhex]


def hash_token(token: str) -> str:
    """SHA-256 of a high-entropy token, hex.

    Tokens and API key secrets carry 256 random bits, so a fast hash is enough: there is
    nothing to brute-force. Passwords chosen by people never go through this.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def sign_token(key: str, message: str) -> str:
    """HMAC-SHA256 of ``message`` under ``key``, hex: what a CSRF token carries."""
    return hmac.new(key.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).hexdigest()


def constant_time_equal(a: str | bytes, b: str | bytes) -> bool:
    a_b = a.encode("utf-8") if isinstance(a, str) else a
    b_b = b.encode("utf-8") if isinstance(b, str) else b
    return hmac.compare_digest(a_b, b_b)


def generate_recovery_password(groups: int = 6, group_len: int = 5) -> str:
    """A recovery password a person can write down: 6 groups of 5 (about 148 bits)."""
    return "-".join(
        "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(group_len)) for _ in range(groups)
    )
