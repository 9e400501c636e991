"""Certificates and PFX files (ams.crypto.certs) against the real `openssl` command.

Our exports are read back by `openssl pkcs12`; PFX files made by `openssl` (OpenSSL 3
default, -legacy, -descert) import; every bad file gets its clear error.
"""

from __future__ import annotations

import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from ams.crypto import (
    certificate_from_pem,
    certificate_pem,
    describe,
    export_pfx,
    generate_certificate,
    import_pfx,
    thumbprint,
)
from ams.crypto.certs import AMS_EKU_OID, MAX_PFX_BYTES
from ams.errors import (
    BadInput,
    CertificateKeyUnsupported,
    PfxInvalid,
    PfxKeyMismatch,
    PfxNoPrivateKey,
    WrongPassword,
)

PASSWORD = "Copper-Meadow-Violin-5382"


def openssl(*args: str, cwd: Path) -> str:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pfx")


@pytest.fixture(scope="module")
def pair() -> tuple[bytes, bytes]:
    # Export/import does not depend on the key size: 2048 bits keeps the module fast.
    return generate_certificate("pfx test", key_size=2048)


@pytest.fixture(scope="module")
def openssl_pair(work: Path) -> tuple[Path, Path, str]:
    """(cert.pem, key.pem, SHA-256 thumbprint) made by `openssl req`."""
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out", "cert.pem",
        "-subj", "/CN=made by openssl", "-days", "30", cwd=work,
    )  # fmt: skip
    out = openssl("x509", "-in", "cert.pem", "-noout", "-fingerprint", "-sha256", cwd=work)
    fingerprint = out.split("=", 1)[1].strip().replace(":", "").lower()
    return work / "cert.pem", work / "key.pem", fingerprint


def _openssl_pfx(
    work: Path, name: str, *extra: str, cert: str = "cert.pem", key: str | None = "key.pem"
) -> bytes:
    args = ["pkcs12", "-export", "-in", cert, "-out", name, "-passout", f"pass:{PASSWORD}", *extra]
    if key is not None:
        args += ["-inkey", key]
    openssl(*args, cwd=work)
    return (work / name).read_bytes()


# -- generated certificates -----------------------------------------------------------------


def test_generated_certificate_is_rsa4096_20_years_key_encipherment_not_ca_with_our_eku() -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    cert_der, key_der = generate_certificate("AMS password encryption agent", now=now)
    cert = x509.load_der_x509_certificate(cert_der)
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.key_size == 4096
    assert cert.not_valid_after_utc == datetime(2046, 3, 1, 12, 0, tzinfo=UTC)
    assert cert.not_valid_before_utc <= now
    assert cert.issuer == cert.subject
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_encipherment and not usage.value.digital_signature
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert [oid.dotted_string for oid in eku.value] == [AMS_EKU_OID]
    facts = describe(cert_der)
    assert facts.key_size == 4096
    assert facts.thumbprint == thumbprint(cert_der)
    assert len(facts.thumbprint) == 64 and facts.thumbprint == facts.thumbprint.lower()
    assert "CN=AMS password encryption agent" in facts.subject
    assert len(key_der) > 2000


def test_pem_round_trip(pair: tuple[bytes, bytes]) -> None:
    pem = certificate_pem(pair[0])
    assert pem.startswith("-----BEGIN CERTIFICATE-----")
    assert certificate_from_pem(pem) == pair[0]
    assert certificate_from_pem(pem.encode()) == pair[0]
    with pytest.raises(BadInput):
        certificate_from_pem("not a certificate")


def test_thumbprint_matches_openssl(pair: tuple[bytes, bytes], work: Path) -> None:
    (work / "ours.pem").write_text(certificate_pem(pair[0]))
    out = openssl("x509", "-in", "ours.pem", "-noout", "-fingerprint", "-sha256", cwd=work)
    assert out.split("=", 1)[1].strip().replace(":", "").lower() == thumbprint(pair[0])


# -- export, read back by openssl -------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(pair: tuple[bytes, bytes]) -> bytes:
    return export_pfx(pair[0], pair[1], PASSWORD)


@pytest.fixture(scope="module")
def exported_compat(pair: tuple[bytes, bytes]) -> bytes:
    return export_pfx(pair[0], pair[1], PASSWORD, compat=True)


def _modulus(work: Path, kind: str, path: str) -> str:
    out = openssl(kind, "-in", path, "-noout", "-modulus", cwd=work)
    return out.strip().split("=", 1)[1]


def test_export_is_pbes2_aes256_pbkdf2_sha256_600k_with_sha256_mac(
    pair: tuple[bytes, bytes], work: Path
) -> None:
    (work / "export.pfx").write_bytes(export_pfx(pair[0], pair[1], PASSWORD))
    info = openssl("pkcs12", "-in", "export.pfx", "-info", "-noout", "-passin", f"pass:{PASSWORD}", cwd=work)
    assert "MAC: sha256" in info
    bags = re.findall(r"(PKCS7 Encrypted data|Shrouded Keybag): (.*)", info)
    assert {b[0] for b in bags} == {"PKCS7 Encrypted data", "Shrouded Keybag"}
    for _, algorithm in bags:
        assert algorithm.startswith("PBES2, PBKDF2, AES-256-CBC"), algorithm
        assert "PRF hmacWithSHA256" in algorithm
        iterations = int(re.search(r"Iteration (\d+)", algorithm).group(1))  # type: ignore[union-attr]
        assert iterations >= 600_000

    openssl(
        "pkcs12",
        "-in",
        "export.pfx",
        "-nokeys",
        "-out",
        "exp-cert.pem",
        "-passin",
        f"pass:{PASSWORD}",
        cwd=work,
    )
    openssl(
        "pkcs12", "-in", "export.pfx", "-nocerts", "-nodes", "-out", "exp-key.pem",
        "-passin", f"pass:{PASSWORD}", cwd=work,
    )  # fmt: skip
    assert _modulus(work, "x509", "exp-cert.pem") == _modulus(work, "rsa", "exp-key.pem")
    assert certificate_from_pem((work / "exp-cert.pem").read_bytes()) == pair[0]


def test_compat_export_is_3des_with_sha1_mac(
    pair: tuple[bytes, bytes], exported_compat: bytes, work: Path
) -> None:
    (work / "compat.pfx").write_bytes(exported_compat)
    info = openssl("pkcs12", "-in", "compat.pfx", "-info", "-noout", "-passin", f"pass:{PASSWORD}", cwd=work)
    assert "MAC: sha1" in info
    assert "Shrouded Keybag: pbeWithSHA1And3-KeyTripleDES-CBC" in info
    assert "PKCS7 Encrypted data: pbeWithSHA1And3-KeyTripleDES-CBC" in info
    openssl(
        "pkcs12", "-in", "compat.pfx", "-nocerts", "-nodes", "-out", "compat-key.pem", "-passin",
        f"pass:{PASSWORD}", cwd=work,
    )  # fmt: skip
    (work / "compat-cert.pem").write_text(certificate_pem(pair[0]))
    assert _modulus(work, "rsa", "compat-key.pem") == _modulus(work, "x509", "compat-cert.pem")


def test_export_import_round_trip(pair: tuple[bytes, bytes], exported: bytes, exported_compat: bytes) -> None:
    assert import_pfx(exported, PASSWORD) == pair
    assert import_pfx(exported_compat, PASSWORD) == pair


def test_export_refuses_a_key_of_another_certificate(pair: tuple[bytes, bytes]) -> None:
    other = generate_certificate("other", key_size=2048)
    with pytest.raises(PfxKeyMismatch):
        export_pfx(pair[0], other[1], PASSWORD)


# -- import of PFX files made by openssl ------------------------------------------------------


@pytest.mark.parametrize(
    "flavour", [(), ("-legacy",), ("-descert",)], ids=["openssl3-default", "legacy", "descert"]
)
def test_import_openssl_pfx(
    work: Path, openssl_pair: tuple[Path, Path, str], flavour: tuple[str, ...]
) -> None:
    name = f"openssl{''.join(flavour)}.pfx"
    data = _openssl_pfx(work, name, *flavour)
    cert_der, key_der = import_pfx(data, PASSWORD)
    assert thumbprint(cert_der) == openssl_pair[2]
    # The key we return is the one of the certificate: let openssl compare.
    (work / f"{name}.key.der").write_bytes(key_der)
    out = openssl("rsa", "-inform", "DER", "-in", f"{name}.key.der", "-noout", "-modulus", cwd=work)
    assert out.strip().split("=", 1)[1] == _modulus(work, "x509", "cert.pem")


# -- bad input: one clear error each -----------------------------------------------------------


def test_wrong_password(work: Path, openssl_pair: tuple[Path, Path, str]) -> None:
    data = _openssl_pfx(work, "wrongpw.pfx")
    with pytest.raises(WrongPassword, match="password is wrong") as caught:
        import_pfx(data, "Not-The-Password-123")
    assert PASSWORD not in str(caught.value)


def test_no_private_key(work: Path, openssl_pair: tuple[Path, Path, str]) -> None:
    data = _openssl_pfx(work, "nokey.pfx", "-nokeys", key=None)
    with pytest.raises(PfxNoPrivateKey):
        import_pfx(data, PASSWORD)


def test_key_not_matching_the_certificate(work: Path, openssl_pair: tuple[Path, Path, str]) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    # openssl refuses to make such a file, so build it directly.
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = x509.load_pem_x509_certificate(openssl_pair[0].read_bytes())
    data = pkcs12.serialize_key_and_certificates(
        b"mismatch", other_key, None, [cert], serialization.BestAvailableEncryption(PASSWORD.encode())
    )
    with pytest.raises(PfxKeyMismatch):
        import_pfx(data, PASSWORD)


def test_ec_key_is_refused(work: Path) -> None:
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ec-key.pem", "-out", "ec-cert.pem", "-subj", "/CN=ec", "-days", "1", cwd=work,
    )  # fmt: skip
    data = _openssl_pfx(work, "ec.pfx", cert="ec-cert.pem", key="ec-key.pem")
    with pytest.raises(CertificateKeyUnsupported, match="an EC key"):
        import_pfx(data, PASSWORD)


def test_small_rsa_key_is_refused(work: Path) -> None:
    openssl(
        "req", "-x509", "-newkey", "rsa:1024", "-nodes", "-keyout", "small-key.pem", "-out", "small-cert.pem",
        "-subj", "/CN=small", "-days", "1", cwd=work,
    )  # fmt: skip
    data = _openssl_pfx(work, "small.pfx", cert="small-cert.pem", key="small-key.pem")
    with pytest.raises(CertificateKeyUnsupported, match="RSA-1024"):
        import_pfx(data, PASSWORD)


def test_not_a_pfx(openssl_pair: tuple[Path, Path, str]) -> None:
    with pytest.raises(PfxInvalid, match="PEM"):
        import_pfx(openssl_pair[0].read_bytes(), PASSWORD)
    with pytest.raises(PfxInvalid):
        import_pfx(b"hello, this is a text file\n" * 10, PASSWORD)
    with pytest.raises(PfxInvalid):
        # A certificate in DER: a SEQUENCE, but not a PFX.
        import_pfx(certificate_from_pem(openssl_pair[0].read_bytes()), PASSWORD)


def test_truncated_pfx_is_not_a_pfx(work: Path, openssl_pair: tuple[Path, Path, str]) -> None:
    data = _openssl_pfx(work, "cut.pfx")
    with pytest.raises(PfxInvalid):
        import_pfx(data[: len(data) // 2], PASSWORD)


def test_huge_file_is_not_a_pfx() -> None:
    with pytest.raises(PfxInvalid, match="KiB"):
        import_pfx(b"\x30" * (MAX_PFX_BYTES + 1), PASSWORD)


def test_empty_file() -> None:
    with pytest.raises(PfxInvalid, match="empty"):
        import_pfx(b"", PASSWORD)
