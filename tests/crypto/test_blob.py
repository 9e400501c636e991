"""Password blobs (ams.crypto.blob): round trip, layout, and refusal of anything altered."""

from __future__ import annotations

import json
import struct

import pytest

from ams.crypto import blob_thumbprint, decrypt_password, encrypt_password, generate_certificate, thumbprint
from ams.errors import BadInput, DecryptionFailed

PLAINTEXT = json.dumps(
    {"account": "root", "password": "Wx7-pQ!z", "created_at": "2026-01-01T00:00:00+00:00", "version": 3}
).encode()


@pytest.fixture(scope="module")
def pair() -> tuple[bytes, bytes]:
    # The key size is not what these tests check: 2048 bits keeps them fast.
    return generate_certificate("blob test", key_size=2048)


@pytest.fixture(scope="module")
def other_pair() -> tuple[bytes, bytes]:
    return generate_certificate("another certificate", key_size=2048)


@pytest.fixture(scope="module")
def blob(pair: tuple[bytes, bytes]) -> bytes:
    return encrypt_password(pair[0], PLAINTEXT)


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def test_round_trip(pair: tuple[bytes, bytes], blob: bytes) -> None:
    assert decrypt_password(blob, pair[1]) == PLAINTEXT
    assert blob_thumbprint(blob) == thumbprint(pair[0])


def test_layout(pair: tuple[bytes, bytes], blob: bytes) -> None:
    assert blob[:4] == b"AMSP"
    assert blob[4] == 1
    assert blob[5:37] == bytes.fromhex(thumbprint(pair[0]))
    (wrapped_len,) = struct.unpack(">H", blob[37:39])
    assert wrapped_len == 256  # RSA-2048 OAEP output
    # header + nonce 12 + ciphertext (same length as the plaintext) + tag 16
    assert len(blob) == 39 + wrapped_len + 12 + len(PLAINTEXT) + 16


def test_each_encryption_is_fresh(pair: tuple[bytes, bytes], blob: bytes) -> None:
    again = encrypt_password(pair[0], PLAINTEXT)
    assert again != blob
    assert again[:37] == blob[:37]
    assert decrypt_password(again, pair[1]) == PLAINTEXT


@pytest.mark.parametrize(
    "where",
    [0, 4, 5, 36, 37, 38, 39, 39 + 255, 39 + 256, 39 + 256 + 11],
    ids=["magic", "version", "thumbprint-first", "thumbprint-last", "length-hi", "length-lo",
         "wrapped-first", "wrapped-last", "nonce-first", "nonce-last"],
)  # fmt: skip
def test_tampered_header_is_refused(pair: tuple[bytes, bytes], blob: bytes, where: int) -> None:
    with pytest.raises(DecryptionFailed):
        decrypt_password(_flip(blob, where), pair[1])


def test_a_header_thumbprint_swapped_to_another_certificate_is_refused(
    pair: tuple[bytes, bytes], other_pair: tuple[bytes, bytes], blob: bytes
) -> None:
    # The thumbprint is authenticated: pointing the blob at another certificate breaks it.
    forged = blob[:5] + bytes.fromhex(thumbprint(other_pair[0])) + blob[37:]
    assert blob_thumbprint(forged) == thumbprint(other_pair[0])
    with pytest.raises(DecryptionFailed):
        decrypt_password(forged, pair[1])


@pytest.mark.parametrize("offset_from_end", [1, 16, 17, len(PLAINTEXT) + 16])
def test_tampered_ciphertext_or_tag_is_refused(
    pair: tuple[bytes, bytes], blob: bytes, offset_from_end: int
) -> None:
    with pytest.raises(DecryptionFailed):
        decrypt_password(_flip(blob, len(blob) - offset_from_end), pair[1])


def test_wrong_certificate_is_refused(other_pair: tuple[bytes, bytes], blob: bytes) -> None:
    with pytest.raises(DecryptionFailed):
        decrypt_password(blob, other_pair[1])


@pytest.mark.parametrize("cut", [0, 3, 20, 38, 39 + 100, -1])
def test_truncated_blobs_are_refused(pair: tuple[bytes, bytes], blob: bytes, cut: int) -> None:
    with pytest.raises(DecryptionFailed):
        decrypt_password(blob[:cut], pair[1])


def test_extra_bytes_are_refused(pair: tuple[bytes, bytes], blob: bytes) -> None:
    with pytest.raises(DecryptionFailed):
        decrypt_password(blob + b"\x00", pair[1])


def test_unknown_version_is_refused_with_its_number(pair: tuple[bytes, bytes], blob: bytes) -> None:
    with pytest.raises(DecryptionFailed, match="version 2"):
        decrypt_password(blob[:4] + b"\x02" + blob[5:], pair[1])


def test_malformed_header_has_no_thumbprint() -> None:
    for junk in (b"", b"AMSP", b"XXXX" + b"\x01" * 60):
        with pytest.raises(DecryptionFailed):
            blob_thumbprint(junk)


def test_junk_private_key_is_a_decryption_failure(blob: bytes) -> None:
    with pytest.raises(DecryptionFailed):
        decrypt_password(blob, b"not a key")


def test_encrypting_to_junk_is_bad_input() -> None:
    with pytest.raises(BadInput):
        encrypt_password(b"not a certificate", PLAINTEXT)
