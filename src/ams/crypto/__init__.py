"""The only package of AMS that touches cryptographic primitives.

It exposes small, misuse-resistant recipes; callers never see a cipher, a nonce or a
padding. Every failure to open, unwrap or verify raises one opaque
:class:`ams.errors.DecryptionFailed`.
"""

from __future__ import annotations

from ams.crypto.masterkey import (
    MASTER_KEY_BYTES,
    RecoveryKdfParams,
    WrappedKey,
    fingerprint,
    generate_master_key,
    generate_service_key,
    unwrap_with_key,
    unwrap_with_password,
    wrap_with_key,
    wrap_with_password,
)
from ams.crypto.secretbox import SecretBox
from ams.crypto.tokens import (
    constant_time_equal,
    generate_recovery_password,
    hash_token,
    random_id,
    random_secret,
)

__all__ = [
    "MASTER_KEY_BYTES",
    "RecoveryKdfParams",
    "SecretBox",
    "WrappedKey",
    "constant_time_equal",
    "fingerprint",
    "generate_master_key",
    "generate_recovery_password",
    "generate_service_key",
    "hash_token",
    "random_id",
    "random_secret",
    "unwrap_with_key",
    "unwrap_with_password",
    "wrap_with_key",
    "wrap_with_password",
]
