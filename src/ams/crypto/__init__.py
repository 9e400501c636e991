"""The only package of AMS that touches cryptographic primitives.

It exposes small, misuse-resistant recipes; callers never see a cipher, a nonce or a
padding. Every failure to open, unwrap or verify raises one opaque
:class:`ams.errors.DecryptionFailed`.

The names below load their module on first use: a command that only unwraps the master
key and encrypts a backup does not load X.509 and PKCS#12 as well.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ams.crypto.backupbox import PayloadReader, PayloadWriter, seal_sums, verify_sums_seal
    from ams.crypto.blob import blob_thumbprint, decrypt_password, encrypt_password
    from ams.crypto.certs import (
        CertificateFacts,
        certificate_from_pem,
        certificate_pem,
        describe,
        export_pfx,
        generate_certificate,
        import_pfx,
        thumbprint,
    )
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
    from ams.crypto.passhash import hash_password, needs_rehash, verify_password
    from ams.crypto.secretbox import SecretBox
    from ams.crypto.tokens import (
        constant_time_equal,
        generate_recovery_password,
        hash_token,
        random_id,
        random_secret,
        sign_token,
    )

_MODULES = {
    "backupbox": ("PayloadReader", "PayloadWriter", "seal_sums", "verify_sums_seal"),
    "blob": ("blob_thumbprint", "decrypt_password", "encrypt_password"),
    "certs": (
        "CertificateFacts",
        "certificate_from_pem",
        "certificate_pem",
        "describe",
        "export_pfx",
        "generate_certificate",
        "import_pfx",
        "thumbprint",
    ),
    "masterkey": (
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
    ),
    "passhash": ("hash_password", "needs_rehash", "verify_password"),
    "secretbox": ("SecretBox",),
    "tokens": (
        "constant_time_equal",
        "generate_recovery_password",
        "hash_token",
        "random_id",
        "random_secret",
        "sign_token",
    ),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "CertificateFacts",
    "MASTER_KEY_BYTES",
    "PayloadReader",
    "PayloadWriter",
    "RecoveryKdfParams",
    "SecretBox",
    "WrappedKey",
    "blob_thumbprint",
    "certificate_from_pem",
    "certificate_pem",
    "constant_time_equal",
    "decrypt_password",
    "describe",
    "encrypt_password",
    "export_pfx",
    "fingerprint",
    "generate_certificate",
    "generate_master_key",
    "generate_recovery_password",
    "generate_service_key",
    "hash_password",
    "hash_token",
    "import_pfx",
    "needs_rehash",
    "random_id",
    "random_secret",
    "seal_sums",
    "sign_token",
    "thumbprint",
    "unwrap_with_key",
    "unwrap_with_password",
    "verify_password",
    "verify_sums_seal",
    "wrap_with_key",
    "wrap_with_password",
]


def __getattr__(name: str) -> Any:
    try:
        module = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module 'ams.crypto' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"ams.crypto.{module}"), name)
    globals()[name] = value
    return value
