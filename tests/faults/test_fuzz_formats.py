"""Fuzzing the parsers of what AMS reads from outside: the password blob, PFX files, LDIF,
the backup manifest and the snapshot file. Whatever the bytes, only an AMS error escapes,
and it is the documented one for that input (docs/errors.md).

Bounded and reproducible in CI (the Hypothesis profile ``ci``, tests/conftest.py);
``HYPOTHESIS_PROFILE=long`` runs many more examples.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from faults_support import RUN, count, record
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ams.backup.archive import Manifest
from ams.crypto import blob, certs
from ams.directory import ldif, snapfile
from ams.errors import (
    AMSError,
    BackupInvalid,
    BackupUnsupported,
    BadInput,
    CertificateKeyUnsupported,
    DecryptionFailed,
    LdifInvalid,
    PfxInvalid,
    PfxKeyMismatch,
    PfxNoPrivateKey,
    SnapshotCorrupt,
    WrongPassword,
)

AREA = "fuzzing"
# Text of any code point, lone surrogates and NUL included (what JSON can carry).
ANY_TEXT = st.text(st.one_of(st.characters(exclude_categories=[]), st.characters(categories=["Cs"])))


@pytest.fixture(scope="module")
def rsa_pair() -> tuple[bytes, bytes]:
    return certs.generate_certificate("fuzz", key_size=2048)


def _mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    """``seed`` with bytes flipped, cut, inserted or its length fields edited."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(seed)
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(["flip", "cut", "insert", "set"]))
            at = draw(st.integers(0, max(0, len(data) - 1)))
            if kind == "flip" and data:
                data[at] ^= draw(st.integers(1, 255))
            elif kind == "cut":
                del data[at : at + draw(st.integers(1, 64))]
            elif kind == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=32))
            elif data:
                data[at] = draw(st.sampled_from([0, 0x7F, 0x80, 0xFF]))
        return bytes(data)

    return mutate()


# -- the password blob ---------------------------------------------------------------------------


def test_fuzz_password_blob(rsa_pair: tuple[bytes, bytes]) -> None:
    cert, key = rsa_pair
    genuine = blob.encrypt_password(cert, b'{"password": "x"}')

    @given(st.one_of(st.binary(max_size=700), _mutations(genuine)))
    @example(genuine[:38])
    @example(genuine[:37] + b"\0\0" + genuine[39:])
    def check(data: bytes) -> None:
        count("test_fuzz_formats-1")
        try:
            out = blob.decrypt_password(data, key)
        except DecryptionFailed as exc:
            assert exc.code == "decryption_failed" and exc.message
        else:
            assert data == genuine and out == b'{"password": "x"}'
        try:
            thumb = blob.blob_thumbprint(data)
        except DecryptionFailed:
            pass
        else:
            assert len(thumb) == 64

    check()
    record(AREA, "password blob (crypto/blob.py)", RUN["test_fuzz_formats-1"], "only decryption_failed", None)


# -- PFX import ----------------------------------------------------------------------------------

PFX_ERRORS = (PfxInvalid, WrongPassword, PfxNoPrivateKey, PfxKeyMismatch, CertificateKeyUnsupported, BadInput)


def test_fuzz_pfx_import(rsa_pair: tuple[bytes, bytes]) -> None:
    cert, key = rsa_pair
    genuine = certs.export_pfx(cert, key, "pfx-pass", compat=True)  # the fast KDF: many tries

    @settings(suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.one_of(st.binary(max_size=400), _mutations(genuine), st.just(genuine)),
        st.one_of(st.just("pfx-pass"), ANY_TEXT),
    )
    @example(genuine, "\ud800")
    @example(genuine, "pfx-pass\x00")
    def check(data: bytes, password: str) -> None:
        count("test_fuzz_formats-2")
        try:
            got_cert, _got_key = certs.import_pfx(data, password)
        except PFX_ERRORS as exc:
            assert exc.message and "Traceback" not in exc.message
        else:
            assert got_cert == cert

    check()
    record(
        AREA,
        "PFX import (crypto/certs.py)",
        RUN["test_fuzz_formats-2"],
        "only pfx_* / wrong_password / bad_input",
        None,
    )


# -- LDIF ------------------------------------------------------------------------------------

LDIF_LINE = st.one_of(
    st.sampled_from(
        [
            "version: 1",
            "dn: dc=corp,dc=example,dc=com",
            "dn:: ZGM9Y29ycA==",
            "dn:: !!!",
            "objectClass: top",
            "cn:: 4pyT",
            "cn:< file:///etc/passwd",
            "changetype: delete",
            " folded",
            "-",
            "",
            "# comment",
            "cn: a\x00b",
            "dn: cn=\ud800,dc=x",
        ]
    ),
    st.builds(lambda a, s, v: f"{a}{s}{v}", ANY_TEXT, st.sampled_from([":", "::", ":<", ": "]), ANY_TEXT),
    ANY_TEXT,
)


def test_fuzz_ldif_import() -> None:
    @given(st.lists(LDIF_LINE, max_size=20), st.sampled_from(["\n", "\r\n"]), st.booleans())
    @example(["dn: cn=\ud800,dc=x", "cn: x"], "\n", False)  # an unpaired surrogate in text
    def check(lines: list[str], newline: str, as_bytes: bool) -> None:
        count("test_fuzz_formats-3")
        text = newline.join(lines) + newline
        data: bytes | str = text.encode("utf-8", "surrogatepass") if as_bytes else text
        try:
            entries = list(ldif.parse(data))
        except LdifInvalid as exc:
            assert exc.code == "ldif_invalid" and exc.message
        else:
            for entry in entries:
                assert isinstance(entry.dn, str)

    check()
    record(AREA, "LDIF import (directory/ldif.py)", RUN["test_fuzz_formats-3"], "only ldif_invalid", None)


# -- the backup manifest -------------------------------------------------------------------------

GENUINE_MANIFEST: dict[str, object] = {
    "format": "ams-backup",
    "format_version": 1,
    "backup_id": "bk_0123456789abcdef",
    "ams_version": "0.1.0",
    "created_at": "2026-01-01T00:00:00+00:00",
    "kind": "manual",
    "backend": "sqlite",
    "schema_revision": "0008_console",
    "instance_id": "2d5b6e2c-0000-4000-8000-000000000000",
    "master_key_fingerprint": "0123456789abcdef",
    "recovery_wrapping": {"version": 1},
    "recovery_password_set_at": "2026-01-01T00:00:00+00:00",
    "payload": {"salt": "00" * 16},
}
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def manifests(draw: st.DrawFn) -> bytes:
    data = dict(GENUINE_MANIFEST)
    for key in draw(st.lists(st.sampled_from(sorted(GENUINE_MANIFEST)), max_size=4)):
        if draw(st.booleans()):
            data[key] = draw(JSON_VALUE)
        else:
            data.pop(key, None)
    text = json.dumps(data, ensure_ascii=draw(st.booleans()))
    return text.encode("utf-8", "surrogatepass")


def test_fuzz_backup_manifest() -> None:
    @given(st.one_of(manifests(), st.binary(max_size=200), _mutations(json.dumps(GENUINE_MANIFEST).encode())))
    @example(b"[" * 100_000)
    @example(b'{"format": "ams-backup", "format_version": 1e400}')
    def check(raw: bytes) -> None:
        count("test_fuzz_formats-4")
        try:
            manifest = Manifest.parse(raw)
        except (BackupInvalid, BackupUnsupported) as exc:
            assert "manifest.json" in exc.message or "format version" in exc.message, exc.message
            return
        # What the readers use next: only AMS errors.
        for use in (
            lambda: manifest.created_at,
            manifest.payload_salt,
            manifest.recovery_wrapping,
            manifest.needs_password_hint,
        ):
            try:
                use()
            except BackupInvalid as exc:
                assert "manifest.json" in exc.message

    check()
    what = "backup manifest (backup/archive.py Manifest.parse)"
    record(AREA, what, RUN["test_fuzz_formats-4"], "only backup_invalid / backup_unsupported", None)


# -- the snapshot file ---------------------------------------------------------------------------


def _genuine_snapshot(tmp: Path) -> bytes:
    rows = [
        (f"cn=u{i},dc=corp", f"cn=u{i},dc=corp", '["person"]', json.dumps({"cn": [f"u{i}"]}))
        for i in range(4)
    ]
    path = tmp / "genuine.snap"
    from datetime import UTC, datetime

    snapfile.write(
        path,
        {"directory_id": "d-0123456789", "snapshot_id": "s-0123456789"},
        [snapfile.encode_block(rows[:2]), snapfile.encode_block(rows[2:])],
        now=lambda: datetime(2026, 1, 1, tzinfo=UTC),
    )
    return path.read_bytes()


def _with_trailer(body: bytes) -> bytes:
    """A body with its own correct #SHA256 trailer: the parser gets past the checksum."""
    return body + b"#SHA256 " + hashlib.sha256(body).hexdigest().encode() + b"\n"


def test_fuzz_snapshot_file(tmp_path: Path) -> None:
    genuine = _genuine_snapshot(tmp_path)
    body = genuine[:-73]
    path = tmp_path / "s-fuzz.snap"

    @given(
        st.one_of(_mutations(body), st.binary(max_size=300)),
        st.booleans(),
        st.sampled_from([b"", b"AMS-DIRECTORY-SNAPSHOT 1\n", b"AMS-DIRECTORY-SNAPSHOT 2\n"]),
    )
    @example(body.replace(b"#BLOCK 2 ", b"#BLOCK 99999999999 ", 1), True, b"")
    @example(b"AMS-DIRECTORY-SNAPSHOT 2\n" + b"[" * 100_000 + b"\n#END 0\n", True, b"")
    @example(b"AMS-DIRECTORY-SNAPSHOT 2\n{}\n#BLOCK 1 5\n\xff\xfe\n\n\n#END 1\n", True, b"")
    @example(b'AMS-DIRECTORY-SNAPSHOT 1\n{}\n"\\ud800"\t"x"\t[]\t{}\n#END 1\n', True, b"")
    def check(mutated: bytes, trailer: bool, head: bytes) -> None:
        count("test_fuzz_formats-5")
        data = head + mutated if head and not mutated.startswith(b"AMS-") else mutated
        path.write_bytes(_with_trailer(data) if trailer else data)
        try:
            snapfile.verify(path, None)
        except SnapshotCorrupt as exc:
            assert path.name in exc.message
        try:
            header, rows = snapfile.read_entries(path, None)
            assert isinstance(header, dict)
            for row in rows:
                assert len(row) == 4 and all(isinstance(v, str) for v in row)
        except SnapshotCorrupt as exc:
            assert path.name in exc.message
            assert exc.code == "snapshot_corrupt"

    check()
    record(
        AREA,
        "snapshot file (directory/snapfile.py), checksums made to match",
        RUN["test_fuzz_formats-5"],
        "only snapshot_corrupt",
        None,
    )


def test_only_documented_errors_are_raised_here() -> None:
    """Every error these tests accept is in the one hierarchy (so in docs/errors.md)."""
    from ams.errors import all_errors

    known = set(all_errors())
    for error in (
        *PFX_ERRORS,
        DecryptionFailed,
        LdifInvalid,
        BackupInvalid,
        BackupUnsupported,
        SnapshotCorrupt,
    ):
        assert error in known and issubclass(error, AMSError)
