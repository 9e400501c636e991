"""Password encryption certificates: generation, description, PFX (PKCS#12) export and import.

A certificate is handled as its DER bytes and its private key as unencrypted PKCS#8 DER;
callers seal the key with the secret box before it reaches the database. The format
details (extensions, the AMS EKU, PFX algorithms) are in docs/formats.md,
"Certificates / PFX".
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from ams.errors import (
    BadInput,
    CertificateKeyUnsupported,
    PfxInvalid,
    PfxKeyMismatch,
    PfxNoPrivateKey,
    WrongPassword,
)

__all__ = [
    "AMS_EKU_OID",
    "MAX_PFX_BYTES",
    "MIN_RSA_BITS",
    "PFX_KDF_ROUNDS",
    "CertificateFacts",
    "certificate_from_pem",
    "certificate_pem",
    "describe",
    "export_pfx",
    "generate_certificate",
    "import_pfx",
    "thumbprint",
]

# "AMS password encryption": an OID of our own under the UUID arc 2.25 (ITU-T X.667), which
# needs no registration. Nothing else uses it, so the certificate is good for this one job.
AMS_EKU_OID = "2.25.299028325346338425617426054318138842871"
MIN_RSA_BITS = 2048
# A PFX holds a key and a few certificates: a few kilobytes. Anything this large is not one.
MAX_PFX_BYTES = 1024 * 1024
PFX_KDF_ROUNDS = 600_000
_FRIENDLY_NAME = b"AMS password encryption"


@dataclass(frozen=True)
class CertificateFacts:
    thumbprint: str
    subject: str
    not_before: dt.datetime  # aware, UTC
    not_after: dt.datetime  # aware, UTC
    key_size: int


def _add_years(when: dt.datetime, years: int) -> dt.datetime:
    try:
        return when.replace(year=when.year + years)
    except ValueError:  # 29 February into a year without one
        return when.replace(year=when.year + years, day=28)


def generate_certificate(
    common_name: str, *, key_size: int = 4096, years: int = 20, now: dt.datetime | None = None
) -> tuple[bytes, bytes]:
    """(certificate DER, private key PKCS#8 DER): self-signed RSA, keyEncipherment, CA=false, AMS EKU.

    ``now`` is the caller's clock (the service passes ``instance.clock.now()``).
    """
    if not common_name or len(common_name) > 64:
        raise BadInput("a certificate's common name has 1 to 64 characters")
    if key_size < MIN_RSA_BITS:
        raise BadInput(f"an RSA key has at least {MIN_RSA_BITS} bits")
    start = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).replace(microsecond=0)
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "AMS"),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(int.from_bytes(os.urandom(16), "big") >> 1 or 1)
        # A little slack for clocks of devices that run behind.
        .not_valid_before(start - dt.timedelta(minutes=5))
        .not_valid_after(_add_years(start, years))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.ObjectIdentifier(AMS_EKU_OID)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.DER), key_der


def thumbprint(certificate_der: bytes) -> str:
    """SHA-256 of the DER, lowercase hex (64 characters)."""
    return hashlib.sha256(certificate_der).hexdigest()


def _load_der(certificate_der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(certificate_der)
    except ValueError:
        raise BadInput("the data is not a DER X.509 certificate") from None


def certificate_pem(certificate_der: bytes) -> str:
    return _load_der(certificate_der).public_bytes(serialization.Encoding.PEM).decode("ascii")


def certificate_from_pem(pem: str | bytes) -> bytes:
    """The DER of a PEM certificate; :class:`BadInput` for anything else."""
    raw = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    try:
        cert = x509.load_pem_x509_certificate(raw)
    except ValueError:
        raise BadInput("the data is not a PEM certificate (-----BEGIN CERTIFICATE-----)") from None
    return cert.public_bytes(serialization.Encoding.DER)


def describe(certificate_der: bytes) -> CertificateFacts:
    cert = _load_der(certificate_der)
    public = cert.public_key()
    return CertificateFacts(
        thumbprint=thumbprint(certificate_der),
        subject=cert.subject.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key_size=public.key_size if isinstance(public, rsa.RSAPublicKey) else 0,
    )


def _private_key(private_key_der: bytes) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_der_private_key(private_key_der, password=None)
    except (ValueError, TypeError):
        raise BadInput("the data is not an unencrypted PKCS#8 private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CertificateKeyUnsupported()
    return key


def export_pfx(
    certificate_der: bytes, private_key_der: bytes, password: str, *, compat: bool = False
) -> bytes:
    """A password-protected PFX with the certificate and its private key.

    Default: PBES2 (AES-256-CBC, PBKDF2-HMAC-SHA256, 600,000 rounds) and a SHA-256 MAC.
    ``compat``: PBES1 3DES (pbeWithSHA1And3-KeyTripleDES-CBC) and a SHA-1 MAC, for old
    Windows that cannot read PBES2.
    """
    if not password:
        raise BadInput("a PFX file needs a password")
    cert = _load_der(certificate_der)
    key = _private_key(private_key_der)
    cert_key = cert.public_key()
    if not isinstance(cert_key, rsa.RSAPublicKey) or (
        cert_key.public_numbers() != key.public_key().public_numbers()
    ):
        raise PfxKeyMismatch("the private key does not belong to the certificate; nothing was written")
    builder = serialization.PrivateFormat.PKCS12.encryption_builder().kdf_rounds(PFX_KDF_ROUNDS)
    if compat:
        # --compat only: old Windows reads nothing newer than 3DES and a SHA-1 MAC.
        legacy_mac = hashes.SHA1()  # noqa: S303
        builder = builder.key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC).hmac_hash(legacy_mac)
    else:
        builder = builder.key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC).hmac_hash(hashes.SHA256())
    encryption = builder.build(_pfx_password(password))
    return pkcs12.serialize_key_and_certificates(_FRIENDLY_NAME, key, cert, None, encryption)


def _pfx_password(password: str) -> bytes:
    """The password as PKCS#12 takes it: UTF-8 without NUL (a C string to OpenSSL, which
    aborts the process on a NUL; a lone surrogate cannot be encoded at all)."""
    try:
        raw = password.encode("utf-8")
    except UnicodeEncodeError:
        raw = b"\0"
    if b"\0" in raw:
        raise BadInput(
            "a PFX password cannot hold a NUL character or an unpaired surrogate: use printable "
            "text; nothing was changed"
        )
    return raw


def _der_length(data: bytes, at: int) -> tuple[int, int] | None:
    """(length, offset of the contents) of the DER element whose length byte is at ``at``."""
    if at >= len(data):
        return None
    first = data[at]
    if first < 0x80:
        return first, at + 1
    count = first & 0x7F
    if count == 0 or count > 4 or at + 1 + count > len(data):
        return None
    return int.from_bytes(data[at + 1 : at + 1 + count], "big"), at + 1 + count


def _looks_like_pfx(data: bytes) -> bool:
    """PFX ::= SEQUENCE { version INTEGER (3), authSafe ContentInfo, ... } filling the file."""
    if len(data) < 8 or data[0] != 0x30:
        return False
    outer = _der_length(data, 1)
    if outer is None or outer[1] + outer[0] != len(data):
        return False
    at = outer[1]
    return data[at : at + 3] == b"\x02\x01\x03"


def import_pfx(data: bytes, password: str) -> tuple[bytes, bytes]:
    """(certificate DER, private key PKCS#8 DER) from a PFX made by AMS, OpenSSL 3 (default,
    ``-legacy``, ``-descert``) or Windows. The key must be RSA of at least 2048 bits and
    belong to the certificate; every refusal is a clear :class:`ams.errors.AMSError`."""
    if not data:
        raise PfxInvalid("the file is empty: export the certificate with its private key as a .pfx file")
    if len(data) > MAX_PFX_BYTES:
        raise PfxInvalid(f"the file is over {MAX_PFX_BYTES // 1024} KiB: it is not a certificate PFX file")
    if data.lstrip().startswith(b"-----BEGIN"):
        raise PfxInvalid(
            "the file is PEM, not PFX: make a PFX with `openssl pkcs12 -export -in CERT.pem -inkey KEY.pem`"
        )
    if not _looks_like_pfx(data):
        raise PfxInvalid()
    secret = _pfx_password(password)
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, secret)
    except ValueError as exc:
        if "deserialize" in str(exc):
            raise PfxInvalid("the file is not a readable PKCS#12 (PFX) file: export it again") from None
        raise WrongPassword(
            "the PFX password is wrong (or the file is damaged); nothing was changed"
        ) from None
    except Exception:  # noqa: BLE001 - unsupported algorithms surface as various errors
        raise PfxInvalid(
            "the PFX file uses an algorithm AMS cannot read: export it again (OpenSSL 3 default or -legacy)"
        ) from None
    if key is None:
        raise PfxNoPrivateKey()
    if not isinstance(key, rsa.RSAPrivateKey):
        kind = "an EC" if isinstance(key, ec.EllipticCurvePrivateKey) else "a non-RSA"
        raise CertificateKeyUnsupported(
            f"the PFX holds {kind} key: AMS needs RSA of at least {MIN_RSA_BITS} bits; nothing was changed"
        )
    if key.key_size < MIN_RSA_BITS:
        raise CertificateKeyUnsupported(
            f"the PFX holds an RSA-{key.key_size} key: AMS needs at least {MIN_RSA_BITS} bits; "
            "nothing was changed"
        )
    numbers = key.public_key().public_numbers()
    candidates = ([cert] if cert is not None else []) + list(extra or [])
    if not candidates:
        raise PfxInvalid("the PFX file holds no certificate: export the certificate with its private key")
    matching = [
        c
        for c in candidates
        if isinstance(c.public_key(), rsa.RSAPublicKey) and c.public_key().public_numbers() == numbers  # type: ignore[union-attr]
    ]
    if not matching:
        raise PfxKeyMismatch()
    key_der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return matching[0].public_bytes(serialization.Encoding.DER), key_der
