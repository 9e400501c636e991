"""The only package of AMS that touches cryptographic primitives.

It exposes small, misuse-resistant recipes; callers never see a cipher, a nonce or a
padding. Every failure to open, unwrap or verify raises one opaque
:class:`ams.errors.DecryptionFailed`.
"""

from __future__ import annotations

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
    "CertificateFacts",
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
    "hash_token",
    "import_pfx",
    "random_id",
    "random_secret",
    "seal_sums",
    "thumbprint",
    "unwrap_with_key",
    "unwrap_with_password",
    "verify_sums_seal",
    "wrap_with_key",
    "wrap_with_password",
]
