"""Corruption: seeded byte flips, truncations, swapped and foreign chunks in backup archives
and snapshot files. Every damaged file is refused by verify and by restore, with a message
that names what failed (an AMS error, no traceback), and nothing is written.

Most cases go through the service functions in process (ams.backup.verify_backup and
restore_backup into a copy of the instance; ams.directory.snapshots.verify and restore);
a sample goes through the real `ams` command. ``AMS_FAULT_LONG=1`` runs many more cases.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from faults_support import SEED, record, reseal, scale
from sqlalchemy import func, select

from ams import backup
from ams.backup.archive import ArchiveReader
from ams.clock import ManualClock
from ams.db.models.directory import Directory, DirectoryObject, Snapshot
from ams.directory import directories, objects, restore, snapfile, snapshots
from ams.directory.entry import Entry
from ams.errors import AMSError, SnapshotCorrupt
from ams.home import Home
from ams.instance import Instance, create_instance, open_instance
from conftest import RECOVERY_PASSWORD, run_ams, tree_digest

AREA = "corruption"
# What a refusal of a damaged archive may be (docs/errors.md).
ARCHIVE_CODES = {"backup_invalid", "backup_unsafe", "backup_unsupported"}
# A refusal names what failed: a member, the archive, the payload or a header.
ARCHIVE_WORDS = ("manifest.json", "payload", "SHA256SUMS", "tar header", "archive", "padding")
CHUNK = (1 << 20) + 16  # one encrypted payload chunk (docs/formats.md)
PAYLOAD_HEADER = 25


@dataclass
class Backups:
    instance: Instance
    home: Home
    first: Path  # three payload chunks
    second: Path  # another backup of the same instance
    foreign: Path  # a backup of another instance (another master key and recovery password)
    scratch: Path
    stats: dict[str, tuple[int, int]]


@pytest.fixture(scope="module")
def backups(
    golden: tuple[Home, object, object], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backups]:
    from backup_support import copy_home

    golden_home, _fleet, now = golden
    root = tmp_path_factory.mktemp("corruption")
    home = copy_home(golden_home, root / "home")  # type: ignore[arg-type]
    # A config file of 2.2 MiB of random bytes: the payload holds three chunks.
    big = home.config_dir / "templates" / "big.bin"
    big.write_bytes(random.Random(SEED).randbytes(2_300_000))
    os.chmod(big, 0o600)
    instance = open_instance(home, ManualClock(now))  # type: ignore[arg-type]
    outside = root / "archives"
    outside.mkdir(mode=0o700)
    first = backup.create_backup(instance, dest=outside, actor="test").path
    second = backup.create_backup(instance, dest=outside, actor="test").path
    other_home = Home(root / "other")
    create_instance(other_home, recovery_password="Another-Recovery-Password-9921", actor="test")
    other = open_instance(other_home)
    try:
        foreign = backup.create_backup(other, dest=outside, actor="test").path
    finally:
        other.close()
    scratch = root / "scratch"
    scratch.mkdir(mode=0o700)
    try:
        yield Backups(instance, home, first, second, foreign, scratch, _stats(home))
    finally:
        instance.close()


def _state(home: Home) -> dict[str, object]:
    """What a refused restore must leave as it was: every file (the lock file comes and goes,
    SQLite's -shm and -wal change as it is opened) and every row of the database."""
    from backup_support import table_dump

    files: dict[str, object] = {
        k: v
        for k, v in tree_digest(home.root).items()
        if not k.startswith("run/") and not k.endswith(("-shm", "-wal")) and k != "data/ams.db"
    }
    files["data/ams.db rows"] = table_dump(home.sqlite_path)
    return files


def _stats(home: Home) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file: a cheap check after each case (any write
    moves the time); :func:`_state` compares every byte and row at the end."""
    return {
        str(p): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in home.root.rglob("*")
        if "run" not in p.relative_to(home.root).parts[:1] and not p.name.endswith("-shm")
    }


def _refused_everywhere(b: Backups, damaged: Path, before: dict[str, object] | None) -> tuple[str, str]:
    """Verify and restore both refuse ``damaged``; nothing in the home changed (``before``:
    its :func:`_state`, or None for the cheap check against the fixture's stats). (codes)"""
    with pytest.raises(AMSError) as verify_error:
        backup.verify_backup(damaged, instance=b.instance)
    with pytest.raises(AMSError) as restore_error:
        backup.restore_backup(damaged, b.home, actor="test", clock=b.instance.clock)
    for error in (verify_error.value, restore_error.value):
        assert error.code in ARCHIVE_CODES, (damaged.name, error.code, error.message)
        assert any(word in error.message for word in ARCHIVE_WORDS), error.message
        assert "Traceback" not in error.message
    if before is None:
        assert _stats(b.home) == b.stats
    else:
        assert _state(b.home) == before
    assert not (b.home.root / ".restore").exists()
    return verify_error.value.code, restore_error.value.code


def _regions(size: int, payload_at: int, payload_size: int) -> list[tuple[int, int]]:
    """The bytes outside the payload's chunks: headers, manifest, sums, seal, padding, end."""
    return [(0, payload_at + PAYLOAD_HEADER), (payload_at + payload_size - 64, size)]


def _flip_positions(
    size: int, payload_at: int, payload_size: int, count: int, rng: random.Random
) -> list[int]:
    """Half spread over the whole file, half over the bytes that are not payload chunks (few
    bytes, but each one read by a different check)."""
    spots = [rng.randrange(size) for _ in range(count // 2)]
    regions = _regions(size, payload_at, payload_size)
    total = sum(end - start for start, end in regions)
    for _ in range(count - len(spots)):
        at = rng.randrange(total)
        for start, end in regions:
            if at < end - start:
                spots.append(start + at)
                break
            at -= end - start
    return spots


def test_backup_byte_flips_are_refused_by_verify_and_restore(backups: Backups) -> None:
    b = backups
    original = b.first.read_bytes()
    with ArchiveReader(b.first) as reader:
        payload = reader.members["payload.enc"]
    rng = random.Random(SEED)
    count = scale(200, 2000)
    before = _state(b.home)
    damaged = b.scratch / "flipped.amsbak"
    codes: dict[str, int] = {}
    for at in _flip_positions(len(original), payload.offset, payload.size, count, rng):
        data = bytearray(original)
        data[at] ^= rng.randrange(1, 256)
        damaged.write_bytes(data)
        verify_code, _restore_code = _refused_everywhere(b, damaged, None)
        codes[verify_code] = codes.get(verify_code, 0) + 1
    assert _state(b.home) == before
    record(AREA, "backup archive: single-byte flips (verify and restore)", count, f"all refused {codes}")


def test_backup_truncations_are_refused_by_verify_and_restore(backups: Backups) -> None:
    b = backups
    original = b.first.read_bytes()
    rng = random.Random(SEED + 1)
    count = scale(50, 500)
    # Every boundary that matters, then seeded points spread over the file.
    with ArchiveReader(b.first) as reader:
        edges = {0, 1, 511, 512, len(original) - 1, len(original) - 512, len(original) - 1024}
        for member in reader.members.values():
            edges |= {member.offset - 1, member.offset, member.offset + member.size}
    points = sorted(edges | {rng.randrange(len(original)) for _ in range(count - len(edges))})
    before = _state(b.home)
    damaged = b.scratch / "truncated.amsbak"
    for cut in points:
        damaged.write_bytes(original[:cut])
        _refused_everywhere(b, damaged, None)
    assert _state(b.home) == before
    record(AREA, "backup archive: truncation points (verify and restore)", len(points), "all refused")


def _chunks(payload: bytes) -> tuple[bytes, list[bytes]]:
    body = payload[PAYLOAD_HEADER:]
    return payload[:PAYLOAD_HEADER], [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]


def _payload_of(path: Path) -> bytes:
    with ArchiveReader(path) as reader:
        member = reader.members["payload.enc"]
        reader.handle.seek(member.offset)
        return reader.handle.read(member.size)


def test_swapped_and_foreign_chunks_are_refused(backups: Backups) -> None:
    """Chunks swapped, dropped, duplicated or taken from another backup of the same instance:
    as a raw edit (the sums catch it) and resealed with the master key (each chunk's
    authentication catches it, whatever the sums say)."""
    b = backups
    key = b.instance.keyring.master_key()
    header, chunks = _chunks(_payload_of(b.first))
    _other_header, other_chunks = _chunks(_payload_of(b.second))
    assert len(chunks) == 3 and len(other_chunks) == 3
    edits = {
        "chunks 0 and 1 swapped": lambda _h, c: [c[1], c[0], c[2]],
        "chunk 1 dropped": lambda _h, c: [c[0], c[2]],
        "chunk 0 twice": lambda _h, c: [c[0], c[0], c[1], c[2]],
        "final chunk dropped": lambda _h, c: c[:2],
        "chunk 1 from another backup": lambda _h, c: [c[0], other_chunks[1], c[2]],
        "final chunk from another backup": lambda _h, c: [c[0], c[1], other_chunks[2]],
        "header from another backup": lambda _h, c: c,
    }
    before = _state(b.home)
    original = b.first.read_bytes()
    with ArchiveReader(b.first) as reader:
        member = reader.members["payload.enc"]
    for what, edit in edits.items():
        new_header = _other_header if what.startswith("header") else header
        new_payload = new_header + b"".join(edit(header, chunks))
        # Raw: the same length keeps the tar layout, so the sums are what refuses it.
        if len(new_payload) == member.size:
            raw = b.scratch / "raw.amsbak"
            raw.write_bytes(original[: member.offset] + new_payload + original[member.offset + member.size :])
            _refused_everywhere(b, raw, before)
        # Resealed with the master key: the chunks' own authentication refuses it.
        sealed = reseal(
            b.first,
            key,
            b.scratch / "resealed.amsbak",
            produce=lambda sink: None,
            payload=lambda _plain, p=new_payload: p,  # type: ignore[misc]
            manifest=lambda m, h=new_header: m["payload"].update(salt=h[9:25].hex()),
        )
        codes = _refused_everywhere(b, sealed, before)
        assert codes == ("backup_invalid", "backup_invalid")
    record(
        AREA,
        "backup archive: chunks swapped, dropped, duplicated, from another backup",
        len(edits) * 2,
        "all refused",
    )


def test_an_archive_from_another_instance_is_refused(backups: Backups) -> None:
    """Another instance's archive opens with neither this instance's key nor its recovery
    password; its parts spliced into this instance's archive break the sums or the seal."""
    b = backups
    before = _state(b.home)
    with pytest.raises(AMSError) as no_password:
        backup.verify_backup(b.foreign, instance=b.instance)
    assert no_password.value.code == "recovery_password_required"
    for call in (
        lambda: backup.verify_backup(b.foreign, instance=b.instance, password=lambda _h: RECOVERY_PASSWORD),
        lambda: backup.restore_backup(
            b.foreign, b.home, actor="test", clock=b.instance.clock, password=lambda _h: RECOVERY_PASSWORD
        ),
    ):
        with pytest.raises(AMSError) as wrong:
            call()
        assert wrong.value.code == "wrong_password"
        assert "recovery password does not open this backup" in wrong.value.message
    assert _state(b.home) == before
    # Parts of the foreign archive inside this one.
    mine, theirs = b.first.read_bytes(), b.foreign.read_bytes()
    with ArchiveReader(b.first) as r1, ArchiveReader(b.foreign) as r2:
        m1, m2 = r1.members, r2.members
    spliced = {
        "foreign SHA256SUMS and seal": mine[: m1["SHA256SUMS"].offset - 512]
        + theirs[m2["SHA256SUMS"].offset - 512 :],
        "foreign manifest": theirs[: m2["payload.enc"].offset - 512] + mine[m1["payload.enc"].offset - 512 :],
    }
    for _what, data in spliced.items():
        damaged = b.scratch / "spliced.amsbak"
        damaged.write_bytes(data)
        _refused_everywhere(b, damaged, before)
    record(AREA, "backup archive: from another instance, and spliced with one", 5, "all refused")


def test_the_real_command_refuses_a_sample(backups: Backups) -> None:
    """`ams backup verify` and `ams backup restore` on damaged archives: the documented exit
    status, one line naming what failed, no traceback, nothing changed."""
    b = backups
    original = b.first.read_bytes()
    rng = random.Random(SEED + 2)
    with ArchiveReader(b.first) as reader:
        payload = reader.members["payload.enc"]
    cases = [("flip in a payload chunk", payload.offset + PAYLOAD_HEADER + rng.randrange(CHUNK))]
    home = b.scratch / "cli-home"
    shutil.copytree(b.home.root, home, symlinks=True)
    before = _state(Home(home))
    for what, at in cases:
        data = bytearray(original)
        data[at] ^= 0x5A
        damaged = b.scratch / "cli.amsbak"
        damaged.write_bytes(data)
        for argv in (("backup", "verify", str(damaged)), ("backup", "restore", str(damaged), "--yes")):
            result = run_ams(*argv, home=home)
            assert result.returncode == 80, (what, argv, result.stderr)  # backup_invalid
            assert "Traceback" not in result.stderr + result.stdout
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and any(w in lines[0] for w in ARCHIVE_WORDS), (what, result.stderr)
        assert _state(Home(home)) == before, what
    record(AREA, "backup archive: damaged, through the `ams` command", len(cases) * 2, "all refused")


def test_verifying_a_damaged_copy_leaves_the_catalog_of_the_original_alone(backups: Backups) -> None:
    """A damaged copy elsewhere carries the backup id of a cataloged archive: verifying the
    copy says it is damaged, and the catalog's row (the intact original) is not marked failed."""
    b = backups
    from ams.backup.verify import verify_and_record
    from ams.db.models.backups import BackupRecord

    data = bytearray(b.first.read_bytes())
    with ArchiveReader(b.first) as reader:
        payload = reader.members["payload.enc"]
    data[payload.offset + payload.size // 2] ^= 1  # the manifest still names the backup
    copy = b.scratch / "copy.amsbak"
    copy.write_bytes(data)
    with ArchiveReader(b.first) as reader:
        backup_id = reader.manifest.backup_id
    with b.instance.session() as session:
        before = session.get(BackupRecord, backup_id)
        assert before is not None
        was = (before.verified_at, before.verified_ok)
    with pytest.raises(AMSError) as error:
        verify_and_record(copy, b.instance, actor="test")
    assert error.value.code == "backup_invalid"
    with b.instance.session() as session:
        row = session.get(BackupRecord, backup_id)
        assert row is not None
        assert (row.verified_at, row.verified_ok) == was
    # The original itself is still recorded as verified.
    verify_and_record(b.first, b.instance, actor="test")
    with b.instance.session() as session:
        row = session.get(BackupRecord, backup_id)
        assert row is not None and row.verified_ok is True


# -- snapshot files ---------------------------------------------------------------------------

BASE = "dc=corp,dc=example,dc=com"


@dataclass
class Snapshots:
    instance: Instance
    directory: str
    snapshot: str
    other: str  # another snapshot of the same directory, other entries
    foreign: str  # a snapshot of another directory
    path: Path
    expected: list[str]
    size: int = 0


def _entries(n: int, prefix: str) -> list[Entry]:
    return [Entry(BASE, ["top", "domain"], {"dc": ["corp"]})] + [
        Entry(f"cn={prefix}{i},{BASE}", ["person"], {"cn": [f"{prefix}{i}"], "sn": [str(i)]})
        for i in range(n)
    ]


def _dns(instance: Instance, directory_id: str) -> list[str]:
    return sorted(e.dn for e in objects.list_entries(instance, directory_id, limit=10000))


def _live(s: Snapshots) -> tuple[str, int, dict[int, int]]:
    """The directory's stage and live generation, and its rows per generation (one query
    each: cheap enough for every case; the full entries are compared at the end)."""
    with s.instance.session() as session:
        directory = session.get(Directory, s.directory)
        assert directory is not None
        rows = session.execute(
            select(DirectoryObject.generation, func.count())
            .where(DirectoryObject.directory_id == s.directory)
            .group_by(DirectoryObject.generation)
        ).all()
        return directory.stage, directory.generation, {g: n for g, n in rows}


@pytest.fixture(scope="module")
def snaps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Snapshots]:
    home = Home(tmp_path_factory.mktemp("snapcorrupt") / "home")
    create_instance(home, recovery_password=RECOVERY_PASSWORD, actor="test")
    instance = open_instance(home)  # the real clock, as the `ams` command's
    args = {"dns_name": "corp.example.com", "short_name": "CORP", "actor": "test"}
    d = directories.create(instance, **args).id  # type: ignore[arg-type]
    objects.import_entries(instance, d, _entries(300, "user"), actor="t")
    snapshot = snapshots.create(instance, d, actor="t").id
    objects.import_entries(instance, d, _entries(40, "later")[1:], actor="t")
    other = snapshots.create(instance, d, actor="t").id
    e = directories.create(instance, **{**args, "dns_name": "other.example.com", "short_name": "OTHER"}).id  # type: ignore[arg-type]
    objects.import_entries(instance, e, _entries(300, "user"), actor="t")
    foreign = snapshots.create(instance, e, actor="t").id
    with instance.session() as session:
        row = session.get(Snapshot, snapshot)
        assert row is not None
        path = snapshots.snapshot_path(instance, row)
    try:
        yield Snapshots(instance, d, snapshot, other, foreign, path, _dns(instance, d), path.stat().st_size)
    finally:
        instance.close()


_FRESH_TIMES = itertools.count(1)  # seconds after completion: each case a time never seen


def _snapshot_refused(s: Snapshots, data: bytes, *, quiet: bool) -> str:
    """Write ``data`` as the snapshot's file; verify and restore refuse it. ``quiet``: the
    size and time are set back as written (damage a disk does silently), so only the
    restore worker's full read can find it. Returns the refusal's message."""
    with s.instance.session() as session:
        row = session.get(Snapshot, s.snapshot)
        assert row is not None and row.completed_at is not None
        completed = row.completed_at
    stage, generation, rows = _live(s)
    s.path.write_bytes(data)
    if quiet:
        snapfile.stamp(s.path, completed)
    else:  # a time no earlier check has seen
        stamp = completed + timedelta(seconds=next(_FRESH_TIMES))
        os.utime(s.path, (stamp.timestamp(), stamp.timestamp()))
    with pytest.raises(SnapshotCorrupt) as verify_error:
        snapshots.verify(s.instance, s.snapshot)
    message = verify_error.value.message
    assert s.path.name in message and "Traceback" not in message
    if not quiet:
        with pytest.raises(SnapshotCorrupt) as restore_error:
            snapshots.restore(s.instance, s.snapshot, actor="t")
        assert s.path.name in restore_error.value.message
        assert _live(s) == (stage, generation, rows)
    else:
        try:
            snapshots.restore(s.instance, s.snapshot, actor="t")
        except SnapshotCorrupt as exc:  # the size changed: refused at the request already
            assert len(data) != s.size and s.path.name in exc.message
            assert _live(s) == (stage, generation, rows)
            return message
        (result,) = restore.run_pending(s.instance)
        assert result.state == "failed", result
        info = directories.get(s.instance, s.directory)
        assert info.stage == "RestoreFailed" and s.path.name in (info.stage_reason or ""), info
        message = info.stage_reason or ""
        assert _live(s)[1:] == (generation, rows)  # the old data live, nothing staged left
    return message


def _restore_good(s: Snapshots, original: bytes) -> None:
    s.path.write_bytes(original)
    with s.instance.session() as session:
        row = session.get(Snapshot, s.snapshot)
        assert row is not None and row.completed_at is not None
        snapfile.stamp(s.path, row.completed_at)


def test_snapshot_byte_flips_and_truncations_are_refused(snaps: Snapshots) -> None:
    s = snaps
    original = s.path.read_bytes()
    rng = random.Random(SEED + 3)
    flips, cuts = scale(200, 2000), scale(50, 500)
    quiet_every = 10  # one case in ten goes the silent way, to the restore worker
    try:
        for n in range(flips):
            data = bytearray(original)
            at = rng.randrange(len(data)) if n % 2 else rng.randrange(min(len(data), 600))
            data[at] ^= rng.randrange(1, 256)
            _snapshot_refused(s, bytes(data), quiet=n % quiet_every == 0)
        points = {0, 1, len(original) - 1, len(original) - 73, len(original) - 74}
        points |= {rng.randrange(len(original)) for _ in range(cuts - len(points))}
        for n, cut in enumerate(sorted(points)):
            _snapshot_refused(s, original[:cut], quiet=n % quiet_every == 0)
    finally:
        _restore_good(s, original)
    assert _dns(s.instance, s.directory) == s.expected  # the directory kept its data
    # The intact file still verifies.
    snapshots.verify(s.instance, s.snapshot)
    record(AREA, "snapshot file: single-byte flips (verify and restore)", flips, "all refused")
    record(AREA, "snapshot file: truncation points (verify and restore)", len(points), "all refused")


def _blocks(data: bytes) -> tuple[bytes, list[bytes], bytes]:
    """(head, blocks, tail) of a format-2 snapshot file."""
    head_end = data.index(b"\n", data.index(b"\n") + 1) + 1
    blocks, at = [], head_end
    while data.startswith(b"#BLOCK ", at):
        line_end = data.index(b"\n", at) + 1
        length = int(data[at:line_end].split()[2])
        blocks.append(data[at : line_end + length])
        at = line_end + length
    return data[:head_end], blocks, data[at:]


def test_swapped_blocks_and_foreign_snapshot_files_are_refused(snaps: Snapshots) -> None:
    s = snaps
    original = s.path.read_bytes()
    with s.instance.session() as session:
        rows = {r.id: r for r in session.scalars(select(Snapshot)).all()}
    other = snapshots.snapshot_path(s.instance, rows[s.other]).read_bytes()
    foreign = snapshots.snapshot_path(s.instance, rows[s.foreign]).read_bytes()
    head, blocks, tail = _blocks(original)
    _ohead, other_blocks, _otail = _blocks(other)
    cases: dict[str, bytes] = {
        "another snapshot's whole file": other,
        "another directory's whole file": foreign,
        "a block from another snapshot": head + other_blocks[0] + b"".join(blocks[1:]) + tail,
    }
    if len(blocks) > 1:
        cases["two blocks swapped"] = head + blocks[1] + blocks[0] + b"".join(blocks[2:]) + tail
    else:  # one block: swap two entries' lines inside it
        lines = blocks[0].split(b"\n")
        lines[3], lines[4] = lines[4], lines[3]
        cases["two entries swapped"] = head + b"\n".join(lines) + tail
    try:
        for what, data in cases.items():
            for quiet in (False, True):
                message = _snapshot_refused(s, data, quiet=quiet)
                assert "checksum" in message or "is not the file" in message, (what, message)
    finally:
        _restore_good(s, original)
    record(
        AREA,
        "snapshot file: swapped blocks, another snapshot's or directory's file",
        len(cases) * 2,
        "all refused",
    )


def test_the_real_snapshot_commands_refuse_a_damaged_file(snaps: Snapshots) -> None:
    s = snaps
    original = s.path.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x20
    try:
        s.path.write_bytes(bytes(data))
        for argv in (("snapshot", "verify", s.snapshot), ("snapshot", "restore", s.snapshot)):
            result = run_ams(*argv, home=s.instance.home.root)
            assert result.returncode != 0 and "Traceback" not in result.stderr + result.stdout
            assert s.path.name in result.stderr and "checksum" in result.stderr, result.stderr
        assert _dns(s.instance, s.directory) == s.expected
    finally:
        _restore_good(s, original)
    conn = sqlite3.connect(s.instance.home.root / "data" / "ams.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    record(AREA, "snapshot file: damaged, through the `ams` command", 2, "all refused")


def test_a_refused_snapshot_file_is_closed(snaps: Snapshots) -> None:
    """Found by the long flip run: a flip in the header's directory id (refused by the restore
    worker before it read a block) left the file open until garbage collection."""
    import gc
    import sys

    s = snaps
    original = s.path.read_bytes()
    at = original.index(s.directory.encode()) + len(s.directory) - 1
    data = bytearray(original)
    data[at] ^= 0x01
    leaked: list[str] = []
    previous = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: leaked.append(repr(unraisable.exc_value))
    try:
        message = _snapshot_refused(s, bytes(data), quiet=True)
        gc.collect()
    finally:
        sys.unraisablehook = previous
        _restore_good(s, original)
    assert "checksum" in message
    assert not [e for e in leaked if "ResourceWarning" in e or "unclosed" in e], leaked
