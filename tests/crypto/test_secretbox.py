from __future__ import annotations

import os

import pytest

from ams.crypto import SecretBox
from ams.errors import DecryptionFailed


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(os.urandom(32))


def test_round_trip(box: SecretBox) -> None:
    sealed = box.seal("api-key-secret", "apikey:ak_1", b"s3cret")
    assert b"s3cret" not in sealed
    assert box.open("api-key-secret", "apikey:ak_1", sealed) == b"s3cret"


def test_every_seal_uses_a_fresh_nonce(box: SecretBox) -> None:
    assert box.seal("p", "row:1", b"x") != box.seal("p", "row:1", b"x")


@pytest.mark.parametrize("position", [0, 1, 12, 13, -1])
def test_tampered_ciphertext_is_refused(box: SecretBox, position: int) -> None:
    sealed = bytearray(box.seal("p", "row:1", b"payload"))
    sealed[position] ^= 0x01
    with pytest.raises(DecryptionFailed):
        box.open("p", "row:1", bytes(sealed))


def test_ciphertext_moved_to_another_row_is_refused(box: SecretBox) -> None:
    sealed = box.seal("p", "row:1", b"payload")
    with pytest.raises(DecryptionFailed):
        box.open("p", "row:2", sealed)


def test_wrong_purpose_is_refused(box: SecretBox) -> None:
    sealed = box.seal("api-key-secret", "row:1", b"payload")
    with pytest.raises(DecryptionFailed):
        box.open("certificate-private-key", "row:1", sealed)


def test_another_master_key_cannot_open(box: SecretBox) -> None:
    sealed = box.seal("p", "row:1", b"payload")
    with pytest.raises(DecryptionFailed):
        SecretBox(os.urandom(32)).open("p", "row:1", sealed)


def test_truncated_and_unknown_version_are_refused(box: SecretBox) -> None:
    sealed = box.seal("p", "row:1", b"payload")
    for bad in (b"", sealed[:10], b"\x02" + sealed[1:]):
        with pytest.raises(DecryptionFailed):
            box.open("p", "row:1", bad)


def test_derived_keys_differ_by_purpose(box: SecretBox) -> None:
    assert box.derive_key("backup") != box.derive_key("backup-seal")
    assert len(box.derive_key("backup")) == 32
