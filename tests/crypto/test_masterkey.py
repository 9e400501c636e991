from __future__ import annotations

import json

import pytest

from ams import crypto
from ams.errors import DecryptionFailed


def test_fingerprint_is_16_hex() -> None:
    fp = crypto.fingerprint(b"\x00" * 32)
    assert len(fp) == 16 and int(fp, 16) >= 0


def test_key_wrapping_round_trip_and_aad_binding() -> None:
    mk, key = crypto.generate_master_key(), crypto.generate_service_key()
    wrapped = crypto.wrap_with_key(mk, key, b"aad-1")
    parsed = crypto.WrappedKey.from_json(wrapped.to_json())
    assert crypto.unwrap_with_key(parsed, key, b"aad-1") == mk
    with pytest.raises(DecryptionFailed):
        crypto.unwrap_with_key(parsed, key, b"aad-2")
    with pytest.raises(DecryptionFailed):
        crypto.unwrap_with_key(parsed, crypto.generate_service_key(), b"aad-1")


def test_password_wrapping_meets_the_argon2_floor() -> None:
    mk = crypto.generate_master_key()
    wrapped = crypto.wrap_with_password(mk, "Tangerine-Orbit-Lantern-4471", b"aad")
    doc = json.loads(wrapped.to_json())
    assert doc["kdf"]["name"] == "argon2id"
    assert doc["kdf"]["memory_kib"] >= 65536 and doc["kdf"]["time_cost"] >= 3
    parsed = crypto.WrappedKey.from_json(wrapped.to_json())
    assert crypto.unwrap_with_password(parsed, "Tangerine-Orbit-Lantern-4471", b"aad") == mk
    with pytest.raises(DecryptionFailed):
        crypto.unwrap_with_password(parsed, "Tangerine-Orbit-Lantern-4472", b"aad")


@pytest.mark.parametrize(
    "text",
    ["", "{}", "not json", json.dumps({"version": 2, "alg": "AES-256-GCM", "nonce": "", "ciphertext": ""})],
)
def test_malformed_wrappings_are_refused(text: str) -> None:
    with pytest.raises(DecryptionFailed):
        crypto.WrappedKey.from_json(text)


def test_generated_recovery_passwords_are_long_and_distinct() -> None:
    a, b = crypto.generate_recovery_password(), crypto.generate_recovery_password()
    assert a != b and len(a) == 35
