"""Password blobs: what an agent encrypts to its scope's certificate and the server stores.

Layout (version 1; docs/formats.md, "Password blob")::

    b"AMSP" | version u8 = 1 | thumbprint (32 raw bytes, SHA-256 of the certificate DER)
    | u16 BE length of the wrapped key | RSA-OAEP(SHA-256, MGF1-SHA-256) wrapped AES-256 key
    | nonce (12) | AES-256-GCM ciphertext + tag (16)

The header (everything before the ciphertext, nonce included) is the associated data, so a
changed byte anywhere fails the tag. Only a holder of the private key opens it. Every
failure to open raises one opaque :class:`ams.errors.DecryptionFailed`.
"""

from __future__ import annotations

import functools
import os
import struct

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ams.crypto.certs import MIN_RSA_BITS, thumbprint
from ams.errors import BadInput, DecryptionFailed

__all__ = ["BLOB_MAGIC", "BLOB_VERSION", "blob_thumbprint", "decrypt_password", "encrypt_password"]

BLOB_MAGIC = b"AMSP"
BLOB_VERSION = 1
_THUMB = 32
_NONCE = 12
_TAG = 16
_FIXED = len(BLOB_MAGIC) + 1 + _THUMB + 2  # up to and including the wrapped key's length


def _oaep() -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def encrypt_password(certificate_der: bytes, plaintext: bytes) -> bytes:
    """Encrypt ``plaintext`` (the JSON of docs/formats.md, "Password blob") to the certificate."""
    try:
        cert = x509.load_der_x509_certificate(certificate_der)
    except ValueError:
        raise BadInput("the certificate to encrypt to is not a DER X.509 certificate") from None
    public = cert.public_key()
    if not isinstance(public, rsa.RSAPublicKey) or public.key_size < MIN_RSA_BITS:
        raise BadInput(f"the certificate to encrypt to has no RSA key of at least {MIN_RSA_BITS} bits")
    key = AESGCM.generate_key(bit_length=256)
    wrapped = public.encrypt(key, _oaep())
    nonce = os.urandom(_NONCE)
    header = (
        BLOB_MAGIC
        + bytes([BLOB_VERSION])
        + bytes.fromhex(thumbprint(certificate_der))
        + struct.pack(">H", len(wrapped))
        + wrapped
        + nonce
    )
    return header + AESGCM(key).encrypt(nonce, plaintext, header)


def _split(blob: bytes) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """(thumbprint raw, wrapped key, nonce, header, ciphertext) or DecryptionFailed."""
    if len(blob) < _FIXED or blob[:4] != BLOB_MAGIC:
        raise DecryptionFailed("the password data is not an AMS password blob")
    if blob[4] != BLOB_VERSION:
        raise DecryptionFailed(f"the password blob has version {blob[4]}, which this AMS cannot read")
    (wrapped_len,) = struct.unpack(">H", blob[_FIXED - 2 : _FIXED])
    end_header = _FIXED + wrapped_len + _NONCE
    if wrapped_len == 0 or len(blob) < end_header + _TAG:
        raise DecryptionFailed("the password blob is truncated")
    return (
        blob[5 : 5 + _THUMB],
        blob[_FIXED : _FIXED + wrapped_len],
        blob[_FIXED + wrapped_len : end_header],
        blob[:end_header],
        blob[end_header:],
    )


def blob_thumbprint(blob: bytes) -> str:
    """The thumbprint (lowercase hex) of the certificate the blob says it is encrypted to."""
    return _split(blob)[0].hex()


@functools.lru_cache(maxsize=8)
def _private_key(private_key_der: bytes) -> rsa.RSAPrivateKey:
    """The loaded key, kept for the next blobs of the same certificate.

    Loading an RSA-4096 key and its first private operation cost about as much as the
    decryption itself (OpenSSL sets up per-key data once); the rotation path decrypts every
    report with the same active key. Keys reach here only from AMS's own sealed store,
    where they were fully checked when generated or imported, so they are not validated
    again (that costs ~100x the decryption). A few keys stay loaded in the process, which
    holds the master key that unseals them all anyway (docs/security.md).
    """
    try:
        key = serialization.load_der_private_key(
            private_key_der, password=None, unsafe_skip_rsa_key_validation=True
        )
    except (ValueError, TypeError):
        raise DecryptionFailed("the private key to decrypt with is not readable") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise DecryptionFailed("the private key to decrypt with is not an RSA key")
    return key


def decrypt_password(blob: bytes, private_key_der: bytes) -> bytes:
    """The plaintext; :class:`DecryptionFailed` for a malformed, altered or foreign blob."""
    _thumb, wrapped, nonce, header, ciphertext = _split(blob)
    key = _private_key(private_key_der)
    try:
        aes_key = key.decrypt(wrapped, _oaep())
    except ValueError:
        raise DecryptionFailed() from None
    if len(aes_key) != 32:
        raise DecryptionFailed()
    try:
        return AESGCM(aes_key).decrypt(nonce, ciphertext, header)
    except InvalidTag:
        raise DecryptionFailed() from None
