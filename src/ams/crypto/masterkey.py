"""The master key and its wrappings.

The master key (MK) is 32 random bytes. It is never stored in the clear: it is stored
*wrapped* (AES-256-GCM) under either the service key (a 32-byte key file on the machine)
or a key derived from the recovery password with Argon2id. Both wrappings serialise to a
small versioned JSON document; docs/formats.md describes it field by field.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ams.errors import DecryptionFailed

__all__ = [
    "MASTER_KEY_BYTES",
    "RecoveryKdfParams",
    "WrappedKey",
    "fingerprint",
    "generate_master_key",
    "generate_service_key",
    "unwrap_with_key",
    "unwrap_with_password",
    "wrap_with_key",
    "wrap_with_password",
]

MASTER_KEY_BYTES = 32
_NONCE_BYTES = 12
_FORMAT_VERSION = 1


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def generate_master_key() -> bytes:
    return os.urandom(MASTER_KEY_BYTES)


def generate_service_key() -> bytes:
    return os.urandom(32)


def fingerprint(master_key: bytes) -> str:
    """First 16 hex characters of SHA-256(MK): safe to show, log and compare."""
    return hashlib.sha256(master_key).hexdigest()[:16]


@dataclass(frozen=True)
class RecoveryKdfParams:
    """Argon2id parameters. The floor (64 MiB, t=3) is a contract: never go below it."""

    memory_kib: int = 65536
    time_cost: int = 3
    parallelism: int = 4
    salt: bytes = field(default_factory=lambda: os.urandom(16))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": "argon2id",
            "memory_kib": self.memory_kib,
            "time_cost": self.time_cost,
            "parallelism": self.parallelism,
            "salt": _b64(self.salt),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecoveryKdfParams:
        if data.get("name") != "argon2id":
            raise DecryptionFailed("unknown key derivation in the recovery wrapping")
        return cls(
            memory_kib=int(data["memory_kib"]),
            time_cost=int(data["time_cost"]),
            parallelism=int(data["parallelism"]),
            salt=_unb64(data["salt"]),
        )

    def derive(self, password: str) -> bytes:
        return hash_secret_raw(
            secret=password.encode("utf-8"),
            salt=self.salt,
            time_cost=self.time_cost,
            memory_cost=self.memory_kib,
            parallelism=self.parallelism,
            hash_len=32,
            type=Type.ID,
        )


@dataclass(frozen=True)
class WrappedKey:
    """A key sealed with AES-256-GCM, with the KDF parameters when a password made the key."""

    nonce: bytes
    ciphertext: bytes
    kdf: RecoveryKdfParams | None = None

    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "version": _FORMAT_VERSION,
            "alg": "AES-256-GCM",
            "nonce": _b64(self.nonce),
            "ciphertext": _b64(self.ciphertext),
        }
        if self.kdf is not None:
            doc["kdf"] = self.kdf.to_dict()
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> WrappedKey:
        try:
            doc = json.loads(text)
            if doc.get("version") != _FORMAT_VERSION or doc.get("alg") != "AES-256-GCM":
                raise DecryptionFailed("the key wrapping has an unknown version or algorithm")
            kdf = RecoveryKdfParams.from_dict(doc["kdf"]) if "kdf" in doc else None
            return cls(nonce=_unb64(doc["nonce"]), ciphertext=_unb64(doc["ciphertext"]), kdf=kdf)
        except DecryptionFailed:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise DecryptionFailed("the key wrapping is malformed") from exc


def wrap_with_key(secret: bytes, key: bytes, aad: bytes) -> WrappedKey:
    nonce = os.urandom(_NONCE_BYTES)
    return WrappedKey(nonce=nonce, ciphertext=AESGCM(key).encrypt(nonce, secret, aad))


def unwrap_with_key(wrapped: WrappedKey, key: bytes, aad: bytes) -> bytes:
    if len(key) != 32:
        raise DecryptionFailed("the key has the wrong length")
    try:
        return AESGCM(key).decrypt(wrapped.nonce, wrapped.ciphertext, aad)
    except (InvalidTag, ValueError) as exc:
        raise DecryptionFailed() from exc


def wrap_with_password(
    secret: bytes, password: str, aad: bytes, params: RecoveryKdfParams | None = None
) -> WrappedKey:
    params = params or RecoveryKdfParams()
    inner = wrap_with_key(secret, params.derive(password), aad)
    return WrappedKey(nonce=inner.nonce, ciphertext=inner.ciphertext, kdf=params)


def unwrap_with_password(wrapped: WrappedKey, password: str, aad: bytes) -> bytes:
    if wrapped.kdf is None:
        raise DecryptionFailed("this wrapping is not protected by a password")
    return unwrap_with_key(wrapped, wrapped.kdf.derive(password), aad)
