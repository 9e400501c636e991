"""The secret box: how every secret column is sealed.

``SecretBox(mk).seal(purpose, context, plaintext)`` encrypts with AES-256-GCM under a
subkey derived from the master key by HKDF-SHA256 with ``info = "ams/secretbox/v1/" +
purpose``; the associated data is ``purpose NUL context``. ``context`` names the row
(for example ``apikey:ak_3f...``), so a ciphertext copied into another row, or opened for
another purpose, does not open. Sealed value layout: ``0x01 | nonce(12) | ciphertext+tag``.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ams.errors import DecryptionFailed

__all__ = ["SecretBox"]

_VERSION = b"\x01"
_NONCE_BYTES = 12


class SecretBox:
    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise ValueError("the master key must be 32 bytes")
        self._master_key = master_key
        self._subkeys: dict[str, AESGCM] = {}

    def _aead(self, purpose: str) -> AESGCM:
        if not purpose or "\x00" in purpose:
            raise ValueError("a purpose is a non-empty name without NUL")
        aead = self._subkeys.get(purpose)
        if aead is None:
            subkey = HKDF(
                algorithm=hashes.SHA256(),
                length=32,
                salt=None,
                info=b"ams/secretbox/v1/" + purpose.encode("utf-8"),
            ).derive(self._master_key)
            aead = AESGCM(subkey)
            self._subkeys[purpose] = aead
        return aead

    @staticmethod
    def _aad(purpose: str, context: str) -> bytes:
        return purpose.encode("utf-8") + b"\x00" + context.encode("utf-8")

    def derive_key(self, purpose: str) -> bytes:
        """A 32-byte key for a purpose of its own (backup payloads, seals)."""
        return HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=None,
            info=b"ams/derived/v1/" + purpose.encode("utf-8"),
        ).derive(self._master_key)

    def seal(self, purpose: str, context: str, plaintext: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        body = self._aead(purpose).encrypt(nonce, plaintext, self._aad(purpose, context))
        return _VERSION + nonce + body

    def open(self, purpose: str, context: str, sealed: bytes) -> bytes:
        if len(sealed) < 1 + _NONCE_BYTES + 16 or sealed[:1] != _VERSION:
            raise DecryptionFailed("the sealed value is malformed or of an unknown version")
        nonce = sealed[1 : 1 + _NONCE_BYTES]
        try:
            return self._aead(purpose).decrypt(nonce, sealed[1 + _NONCE_BYTES :], self._aad(purpose, context))
        except InvalidTag as exc:
            raise DecryptionFailed() from exc
