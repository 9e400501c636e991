"""The .amsbak archive: its layout, the manifest, tampering, truncation, unsafe members, writers."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
from datetime import datetime
from pathlib import Path

import pytest

from ams import apikeys, audit, backup, crypto
from ams.backup.archive import MANIFEST, ArchiveWriter, archive_mtime
from ams.backup.embedded import EmbeddedSource
from ams.clock import ManualClock
from ams.db.revision import HEAD_REVISION
from ams.errors import BackupFailed, BackupInvalid, BackupUnsafe, MasterKeyLocked
from ams.home import Home
from ams.instance import Instance, open_instance
from backup_support import RECOVERY, Fleet
from conftest import tree_digest


def _members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def test_archive_is_a_plain_tar_with_a_readable_manifest(populated: Instance) -> None:
    result = backup.create_backup(populated, actor="test")
    assert result.path.parent == populated.home.backups_dir
    assert oct(result.path.stat().st_mode & 0o777) == "0o600"
    assert [m.name for m in _members(result.path)] == [
        "manifest.json",
        "payload.enc",
        "SHA256SUMS",
        "SHA256SUMS.sealed",
    ]
    with tarfile.open(result.path) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        sums = tar.extractfile("SHA256SUMS").read().decode()  # type: ignore[union-attr]
        payload = tar.extractfile("payload.enc").read()  # type: ignore[union-attr]
        raw_manifest = tar.extractfile("manifest.json").read()  # type: ignore[union-attr]
    assert manifest["format"] == "ams-backup" and manifest["format_version"] == 1
    assert manifest["kind"] == "manual" and manifest["backend"] == "sqlite"
    assert manifest["instance_id"] == populated.id
    assert manifest["master_key_fingerprint"] == populated.keyring.fingerprint
    assert manifest["schema_revision"] == HEAD_REVISION
    assert manifest["recovery_password_set_at"].startswith("2026-01-01T00:00:00")
    assert (
        set(manifest["recovery_wrapping"]) >= {"kdf", "nonce", "ciphertext"} or manifest["recovery_wrapping"]
    )
    assert manifest["counts"]["api_keys"] == 2 and manifest["counts"]["devices"] == 3
    assert manifest["counts"]["device_passwords"] == 9
    [cert] = manifest["certificates"]
    assert cert["has_private_key"] is True and cert["scope"] == "agent" and len(cert["thumbprint"]) == 64
    # sha256sum-compatible lines over the two members.
    assert sums == (
        f"{hashlib.sha256(raw_manifest).hexdigest()}  manifest.json\n"
        f"{hashlib.sha256(payload).hexdigest()}  payload.enc\n"
    )
    # The payload is ciphertext: no config text, no SQLite header.
    assert payload[:4] == b"AMSE"
    assert b"echo restored" not in payload and b"SQLite format 3" not in payload
    assert b"echo restored" not in result.path.read_bytes()


def test_create_records_a_catalog_row_and_an_audit_event(populated: Instance) -> None:
    result = backup.create_backup(populated, actor="test")
    [entry] = backup.list_backups(populated)
    assert entry.backup_id == result.backup_id and entry.status == "complete" and entry.exists
    assert entry.size_bytes == result.path.stat().st_size
    with populated.session() as session:
        [event] = audit.list_events(session, event_id=int(audit.Event.BACKUP_CREATED))
    assert event.target == result.backup_id and event.details["kind"] == "manual"


def test_verify_checks_everything_and_names_the_password_needed(populated: Instance) -> None:
    result = backup.create_backup(populated, actor="test")
    report = backup.verify_backup(result.path, instance=populated)
    assert report["ok"] and report["key_from"] == "instance"
    assert report["checks"] == [
        "structure",
        "manifest sum",
        "seal",
        "payload chunks",
        "payload sum",
        "payload paths",
    ]
    assert "set at 2026-01-01T00:00:00" in report["needs"]
    offline = backup.verify_backup(result.path, password=lambda hint: RECOVERY)
    assert offline["key_from"] == "recovery password"


def test_deep_verify_decrypts_samples_and_counts_unrecoverable(populated: Instance) -> None:
    from ams.vault import certificates

    result = backup.create_backup(populated, actor="test")
    deep = backup.verify_backup(result.path, instance=populated, deep=True)["deep"]
    assert deep["certificates_checked"] is True
    [cert] = deep["certificates"]
    assert cert["has_private_key"] and cert["passwords"] == 9 and cert["sample_decrypted"] == 5
    assert deep["unrecoverable_passwords"] == 0 and deep["without_private_key"] == []

    [info] = certificates.list_certificates(populated)
    certificates.lost(populated, info.thumbprint, "test")
    after = backup.create_backup(populated, actor="test")
    deep = backup.verify_backup(after.path, instance=populated, deep=True, allow_unrecoverable=True)["deep"]
    lost = next(c for c in deep["certificates"] if c["thumbprint"] == info.thumbprint)
    assert lost["has_private_key"] is False and lost["unrecoverable_passwords"] == 9
    assert deep["without_private_key"] == [info.thumbprint] and deep["unrecoverable_passwords"] == 9


def test_a_locked_instance_cannot_back_up_and_writes_nothing(populated: Instance) -> None:
    populated.home.service_key_file.unlink()
    locked = open_instance(populated.home, populated.clock)
    try:
        before = tree_digest(populated.home.backups_dir)
        with pytest.raises(MasterKeyLocked):
            backup.create_backup(locked, actor="test")
        assert tree_digest(populated.home.backups_dir) == before
    finally:
        locked.close()


def test_an_unwritable_destination_fails_cleanly(populated: Instance, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(BackupFailed, match="not a folder"):
        backup.create_backup(populated, dest=blocker, actor="test")
    with pytest.raises(BackupFailed, match="permission denied|cannot"):
        backup.create_backup(populated, dest=blocker / "below", actor="test")
    assert list(populated.home.backups_dir.iterdir()) == []


def test_a_full_disk_leaves_no_partial_file(populated: Instance, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from ams.backup import archive

    def full(*_a: object, **_k: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(archive.ArchiveWriter, "finish", full)
    with pytest.raises(BackupFailed, match="is full"):
        backup.create_backup(populated, actor="test")
    assert list(populated.home.backups_dir.iterdir()) == []


# -- tampering ------------------------------------------------------------------------------


@pytest.fixture
def small_backup(instance: Instance) -> Path:
    return backup.create_backup(instance, actor="test").path


def test_every_flipped_byte_in_a_sample_is_refused_naming_what_failed(
    instance: Instance, small_backup: Path
) -> None:
    data = small_backup.read_bytes()
    size = len(data)
    manifest_len = _members(small_backup)[0].size
    payload = _members(small_backup)[1]
    positions = sorted(
        {
            0,
            100,
            148,
            300,
            511,  # the first header (name, checksum, ...)
            512,
            512 + manifest_len // 2,
            512 + manifest_len - 1,  # manifest.json
            512 + manifest_len + 3,  # its zero padding
            payload.offset + 100,  # the payload's header block
            payload.offset_data,
            payload.offset_data + 10,
            payload.offset_data + 30,  # AMSE header
            payload.offset_data + payload.size // 2,
            payload.offset_data + payload.size - 1,  # chunks, tag
            payload.offset_data + payload.size + 1,  # padding after the payload
            size - 1500,
            size - 1100,
            size - 700,
            size - 1024,
            size - 1,  # sums, seal, end blocks
        }
    )
    seen: set[str] = set()
    for pos in positions:
        tampered = bytearray(data)
        tampered[pos] ^= 0x01
        small_backup.write_bytes(bytes(tampered))
        with pytest.raises(BackupInvalid) as caught:
            backup.verify_backup(small_backup, instance=instance)
        message = caught.value.message
        assert any(
            w in message for w in ("manifest", "payload", "SHA256SUMS", "header", "padding", "end", "seal")
        ), (
            pos,
            message,
        )
        seen.add(message.split(" ")[0])
    small_backup.write_bytes(data)
    assert backup.verify_backup(small_backup, instance=instance)["ok"]
    assert len(seen) >= 4  # different parts were named


@pytest.mark.parametrize("keep", [0, 511, 1024, 3000, -2000, -1024, -1])
def test_truncation_is_refused(instance: Instance, small_backup: Path, keep: int) -> None:
    data = small_backup.read_bytes()
    small_backup.write_bytes(data[:keep] if keep > 0 else data[: len(data) + keep] if keep < 0 else b"")
    with pytest.raises(BackupInvalid, match="truncated|incomplete|missing|not an AMS backup"):
        backup.verify_backup(small_backup, instance=instance)


def test_a_payload_truncated_at_a_chunk_boundary_is_refused(instance: Instance) -> None:
    sink = io.BytesIO()
    mk = instance.keyring.master_key()
    writer = crypto.PayloadWriter(sink, mk, chunk_bytes=4096)
    writer.write(os.urandom(4096 * 3 + 10))
    writer.close()
    whole = sink.getvalue()
    assert crypto.PayloadReader(io.BytesIO(whole), mk).read() and True
    cut = 25 + 2 * (4096 + 16)  # header + two full chunks: a clean boundary
    with pytest.raises(Exception, match="truncated"):
        crypto.PayloadReader(io.BytesIO(whole[:cut]), mk).read()
    # Chunks swapped: each is authenticated with its index.
    first, second = whole[25 : 25 + 4112], whole[25 + 4112 : 25 + 2 * 4112]
    swapped = whole[:25] + second + first + whole[25 + 2 * 4112 :]
    with pytest.raises(Exception, match="chunk 0 does not authenticate"):
        crypto.PayloadReader(io.BytesIO(swapped), mk).read()


def test_an_archive_sealed_under_another_key_is_refused(
    instance: Instance, small_backup: Path, tmp_path: Path
) -> None:
    forged = tmp_path / "forged.amsbak"
    with tarfile.open(small_backup) as tar:
        manifest = tar.extractfile(MANIFEST).read()  # type: ignore[union-attr]
    other_key = crypto.generate_master_key()
    with open(forged, "w+b") as handle:
        writer = ArchiveWriter(handle, _mtime_of(manifest))
        writer.add_bytes(MANIFEST, manifest)
        writer.write_payload(other_key, lambda sink: sink.write(b"x"))
        writer.finish(other_key, json.loads(manifest)["master_key_fingerprint"])
    with pytest.raises(BackupInvalid, match="SHA256SUMS.sealed does not match"):
        backup.verify_backup(forged, instance=instance)


# -- unsafe members ---------------------------------------------------------------------------


def _evil_archive(instance: Instance, path: Path, member: tarfile.TarInfo, data: bytes = b"") -> None:
    """A properly sealed archive (this instance's key) whose inner tar holds ``member``."""
    good = backup.create_backup(instance, actor="test", dest=path.parent / "good").path
    with tarfile.open(good) as tar:
        manifest = tar.extractfile(MANIFEST).read()  # type: ignore[union-attr]
    db_bytes = instance.home.sqlite_path.read_bytes()
    mk = instance.keyring.master_key()

    def produce(sink: object) -> None:
        with tarfile.open(fileobj=sink, mode="w|") as inner:  # type: ignore[call-overload]
            info = tarfile.TarInfo("database/ams.db")
            info.size = len(db_bytes)
            inner.addfile(info, io.BytesIO(db_bytes))
            inner.addfile(member, io.BytesIO(data) if member.isreg() else None)

    salt = bytes.fromhex(json.loads(manifest)["payload"]["salt"])  # the salt the manifest binds
    with open(path, "w+b") as handle:
        writer = ArchiveWriter(handle, _mtime_of(manifest))
        writer.add_bytes(MANIFEST, manifest)
        writer.write_payload(mk, produce, salt)
        writer.finish(mk, instance.keyring.fingerprint)


def test_a_payload_from_another_backup_is_refused(instance: Instance, tmp_path: Path) -> None:
    """Same master key, another backup's payload under this backup's sealed manifest and sums."""
    first = backup.create_backup(instance, actor="test", dest=tmp_path / "a").path
    second = backup.create_backup(instance, actor="test", dest=tmp_path / "b").path
    with tarfile.open(first) as tar:
        manifest = tar.extractfile(MANIFEST).read()  # type: ignore[union-attr]
    with tarfile.open(second) as tar:
        payload = tar.extractfile("payload.enc").read()  # type: ignore[union-attr]
    mk = instance.keyring.master_key()
    forged = tmp_path / "forged.amsbak"
    with open(forged, "w+b") as handle:
        writer = ArchiveWriter(handle, _mtime_of(manifest))
        writer.add_bytes(MANIFEST, manifest)
        handle.write(_tar_header("payload.enc", len(payload), _mtime_of(manifest)))
        handle.write(payload + bytes(-len(payload) % 512))
        # The sums and the seal describe this manifest and the swapped-in payload.
        writer.sums["payload.enc"] = hashlib.sha256(payload).hexdigest()
        writer.finish(mk, instance.keyring.fingerprint)
    with pytest.raises(BackupInvalid, match="not the payload manifest.json describes"):
        backup.verify_backup(forged, instance=instance)
    instance.close()
    before = tree_digest(instance.home.root)
    with pytest.raises(BackupInvalid, match="not the payload manifest.json describes"):
        backup.restore_backup(forged, instance.home, actor="test", clock=instance.clock)
    assert tree_digest(instance.home.root) == before


def _mtime_of(manifest: bytes) -> int:
    """The time every outer header must carry: the manifest's created_at."""
    return archive_mtime(datetime.fromisoformat(json.loads(manifest)["created_at"]))


def _tar_header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o600
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.linkname = link
    return info


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (_member("config/../../escaped.txt", size=4), "leaving its folder"),
        (_member("../escaped.txt", size=4), "leaving its folder"),
        (_member("/tmp/ams-escaped.txt", size=4), "absolute path"),
        (_member("config/link", tarfile.SYMTYPE, link="/etc/passwd"), "symbolic link"),
        (_member("config/hard", tarfile.LNKTYPE, link="database/ams.db"), "hard link"),
        (_member("config/dev", tarfile.CHRTYPE), "device file"),
        (_member("config/blk", tarfile.BLKTYPE), "device file"),
        (_member("config/fifo", tarfile.FIFOTYPE), "special file"),
        (_member("elsewhere/file", size=4), "unexpected path"),
    ],
)
def test_unsafe_members_are_refused_without_writing_outside(
    instance: Instance, tmp_path: Path, member: tarfile.TarInfo, reason: str
) -> None:
    evil = tmp_path / "evil" / "evil.amsbak"
    evil.parent.mkdir()
    _evil_archive(instance, evil, member, b"pwnd" if member.isreg() else b"")
    with pytest.raises(BackupUnsafe, match=reason):
        backup.verify_backup(evil, instance=instance)
    instance.close()
    before_home = tree_digest(instance.home.root)
    before_around = tree_digest(tmp_path)
    with pytest.raises(BackupUnsafe, match=reason):
        backup.restore_backup(evil, instance.home, actor="test", clock=instance.clock)
    assert tree_digest(instance.home.root) == before_home
    assert tree_digest(tmp_path) == before_around
    assert not Path("/tmp/ams-escaped.txt").exists()


# -- consistency while writers write ---------------------------------------------------------


def test_a_backup_taken_while_agents_rotate_is_consistent(
    golden: tuple[Home, Fleet, object], populated: Instance, tmp_path: Path
) -> None:
    """Threads rotate passwords and create API keys during the backups; each copy is one commit:
    every password it holds decrypts to what the agent set, every sealed secret opens."""
    fleet = golden[1].bind(populated)
    stop = threading.Event()
    errors: list[BaseException] = []

    def rotate() -> None:
        n = 0
        while not stop.is_set():
            try:
                fleet.rotate(sorted(fleet.tokens)[n % 3])
                apikeys.create(populated, f"k{n}", apikeys.Role.READER, "writer")
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                return
            n += 1

    embedded = EmbeddedSource.open(populated.home)
    assert embedded is not None  # the command's path is the one taken below
    embedded.close()
    writer = threading.Thread(target=rotate)
    writer.start()
    try:
        # One through the service's path, one through the command's (plain sqlite3, which
        # also records its catalog row while the writer commits).
        results = [
            backup.create_backup(populated, actor="test", dest=tmp_path / "out"),
            backup.create_backup_at(populated.home, actor="test", dest=tmp_path / "out"),
        ]
    finally:
        stop.set()
        writer.join()
    assert not errors
    assert {e.backup_id for e in backup.list_backups(populated)} == {r.backup_id for r in results}
    for result in results:
        target = Home(tmp_path / f"restored-{result.backup_id}")
        backup.restore_backup(result.path, target, actor="test", password=lambda hint: RECOVERY)
        restored = open_instance(target, ManualClock(populated.clock.now()))
        try:
            keys = apikeys.list_keys(restored)
            assert len(keys) == result.manifest["counts"]["api_keys"]
            for key in keys:  # every sealed secret opens
                assert apikeys.secret_of(restored, key.id)
            read = fleet.read_all(restored)
            held = sum(len(v) for v in read.values())
            assert held == result.manifest["counts"]["device_passwords"]
            for device_id, versions in read.items():
                for version, password in versions.items():
                    assert password is not None and password == fleet.passwords[device_id][version]
        finally:
            restored.close()


def test_verifying_a_catalogued_backup_records_the_result(instance: Instance) -> None:
    from ams.backup.verify import verify_and_record

    result = backup.create_backup(instance, actor="test")
    verify_and_record(result.path, instance, actor="test")
    [entry] = backup.list_backups(instance)
    assert entry.verified_ok is True and entry.verified_at is not None
    data = bytearray(result.path.read_bytes())
    data[-1500] ^= 0x01
    result.path.write_bytes(bytes(data))
    with pytest.raises(BackupInvalid):
        verify_and_record(result.path, instance, actor="test")
    [entry] = backup.list_backups(instance)
    assert entry.verified_ok is False and entry.error
    with instance.session() as session:
        events = audit.list_events(session, event_id=int(audit.Event.BACKUP_VERIFIED))
    assert [e.outcome for e in events] == ["success", "failure"]
