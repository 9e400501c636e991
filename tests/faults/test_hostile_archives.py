"""Hostile archives: sealed correctly (with the instance's master key, as an attacker who
holds it could), so they pass the seal and reach the parsers behind it. Every one is refused
by verify and by restore, nothing is written outside the restore's staging folder (which is
removed), the instance is unchanged, and memory stays bounded whatever sizes are declared.
"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from faults_support import inner_payload, record, reseal, tar_end, tar_member

from ams import backup
from ams.errors import AMSError
from ams.home import Home
from ams.instance import Instance, open_instance
from conftest import run_ams, tree_digest

AREA = "hostile-archives"
CODES = {"backup_invalid", "backup_unsafe", "backup_unsupported"}


@dataclass
class Target:
    instance: Instance
    home: Home
    root: Path  # everything the test made: nothing may appear here but what it writes itself
    archive: Path  # a genuine backup
    inner: bytes  # its decrypted inner tar
    key: bytes


@pytest.fixture(scope="module")
def target(golden: tuple[Home, object, object], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    from ams.clock import ManualClock
    from backup_support import copy_home

    golden_home, _fleet, now = golden
    root = tmp_path_factory.mktemp("hostile")
    home = copy_home(golden_home, root / "home")  # type: ignore[arg-type]
    instance = open_instance(home, ManualClock(now))  # type: ignore[arg-type]
    archives = root / "archives"
    archives.mkdir(mode=0o700)
    genuine = backup.create_backup(instance, dest=archives, actor="test").path
    key = instance.keyring.master_key()
    try:
        yield Target(instance, home, root, genuine, inner_payload(genuine, key), key)
    finally:
        instance.close()


def _members(inner: bytes) -> list[bytes]:
    """The genuine inner tar's members as raw bytes (pax header, header, padded data)."""
    with tarfile.open(fileobj=io.BytesIO(inner), mode="r:") as tar:
        return [
            inner[m.offset : m.offset_data + m.size + (-m.size % 512 if m.isreg() else 0)]
            for m in tar.getmembers()
        ]


def _gzip_bomb() -> bytes:
    """1 GiB of zeros as gzip: 1024 concatenated members of 1 MiB each (a valid stream)."""
    return gzip.compress(bytes(1 << 20), compresslevel=9) * 1024


def _outside(t: Target) -> dict[str, str]:
    """Every file under the test's folder but the archives it writes and SQLite's -shm/-wal."""
    return {
        k: v
        for k, v in tree_digest(t.root).items()
        if not k.startswith(("archives/", "home/run/"))
        and not k.endswith(("-shm", "-wal"))
        and k != "home/data/ams.db"
    }


def _refused(t: Target, archive: Path, *, words: tuple[str, ...] = ()) -> tuple[AMSError, AMSError]:
    from backup_support import table_dump

    before = _outside(t)
    rows = table_dump(t.home.sqlite_path)
    with pytest.raises(AMSError) as verify_error:
        backup.verify_backup(archive, instance=t.instance)
    with pytest.raises(AMSError) as restore_error:
        backup.restore_backup(archive, t.home, actor="test", clock=t.instance.clock)
    for error in (verify_error.value, restore_error.value):
        assert error.code in CODES, (archive.name, error.code, error.message)
        assert not words or any(w in error.message for w in words), error.message
    assert _outside(t) == before
    assert table_dump(t.home.sqlite_path) == rows
    assert not (t.home.root / ".restore").exists()
    assert not Path("/tmp/ams-hostile-evil").exists()
    return verify_error.value, restore_error.value


def _with(t: Target, name: str, extra: list[bytes], *, first: bool = False) -> Path:
    """The genuine inner tar with ``extra`` members added (before or after the genuine ones)."""
    genuine = _members(t.inner)
    members = extra + genuine if first else genuine + extra
    return reseal(
        t.archive, t.key, t.root / "archives" / f"{name}.amsbak", inner=b"".join(members) + tar_end()
    )


HOSTILE: dict[str, tuple[Callable[[], list[bytes]], tuple[str, ...]]] = {
    "a member with ../": (
        lambda: [tar_member("config/../../../../tmp/ams-hostile-evil", b"x")],
        ("leaving",),
    ),
    "a member with ../ through pax": (
        lambda: [tar_member("config/ok", b"x", pax={"path": "config/../../../tmp/ams-hostile-evil"})],
        ("leaving",),
    ),
    "an absolute path": (lambda: [tar_member("/tmp/ams-hostile-evil", b"x")], ("absolute",)),
    "a symbolic link, then a file through it": (
        lambda: [
            tar_member("config/link", type=tarfile.SYMTYPE, linkname="/tmp"),
            tar_member("config/link/ams-hostile-evil", b"x"),
        ],
        ("symbolic link",),
    ),
    "a hard link": (
        lambda: [tar_member("config/hard", type=tarfile.LNKTYPE, linkname="/etc/passwd")],
        ("hard link",),
    ),
    "a character device": (lambda: [tar_member("config/dev", type=tarfile.CHRTYPE)], ("device",)),
    "a block device": (lambda: [tar_member("config/blk", type=tarfile.BLKTYPE)], ("device",)),
    "a FIFO": (lambda: [tar_member("config/fifo", type=tarfile.FIFOTYPE)], ("special file",)),
    "a GNU sparse file": (lambda: [tar_member("config/sparse", type=tarfile.GNUTYPE_SPARSE)], ("type",)),
    "a duplicate name": (lambda: [tar_member("config/ams.toml", b"[database]\n")], ("twice",)),
    "a file, then a folder of the same name": (
        lambda: [tar_member("config/x", b"x"), tar_member("config/x", type=tarfile.DIRTYPE)],
        ("config/x",),
    ),
    "a file, then a file under it": (
        lambda: [tar_member("config/y", b"y"), tar_member("config/y/z", b"z")],
        ("config/y",),
    ),
    "a path outside the three roots": (lambda: [tar_member("keys/service.key", b"x")], ("unexpected path",)),
    "a backslash": (lambda: [tar_member("config\\..\\x", b"x")], ("backslash",)),
    "a declared size far beyond the data": (
        lambda: [tar_member("config/big", b"x" * 100, size=8 << 30)],
        ("truncated",),
    ),
    "a pax size far beyond the data": (
        lambda: [tar_member("config/big", b"x" * 100, pax={"size": str(1 << 50)})],
        ("truncated",),
    ),
    "a malformed pax size": (lambda: [tar_member("config/s", b"x", pax={"size": "12abc"})], ("size",)),
    "a huge pax header": (lambda: [tar_member("config/p", b"x", pax={"comment": "c" * (2 << 20)})], ("pax",)),
}


@pytest.mark.parametrize("what", list(HOSTILE))
def test_hostile_inner_members_are_refused(target: Target, what: str) -> None:
    build, words = HOSTILE[what]
    archive = _with(target, what.replace(" ", "-").replace("/", "_"), build())
    _refused(target, archive, words=words)
    record(AREA, f"inner member: {what}", 1, "refused")


def test_an_inner_archive_that_is_not_a_tar_is_refused(target: Target) -> None:
    """A gzip bomb (1 GiB of zeros in 1 MiB) as the inner archive: nothing decompresses it."""
    bomb = _gzip_bomb()
    archive = reseal(target.archive, target.key, target.root / "archives" / "gzip.amsbak", inner=bomb)
    _refused(target, archive, words=("inner archive",))
    garbage = reseal(
        target.archive, target.key, target.root / "archives" / "garbage.amsbak", inner=b"\x01" * 4096
    )
    _refused(target, garbage, words=("inner archive",))
    record(AREA, "inner archive: a gzip bomb and garbage instead of a tar", 2, "all refused")


def test_hostile_manifests_are_refused(target: Target) -> None:
    """A manifest of 17 MiB, a deeply nested one, and manifests with odd field types: refused
    with backup_invalid (never a traceback), before anything is read into memory whole."""

    def big(m: dict[str, object]) -> None:
        m["padding"] = "p" * (17 << 20)

    cases: dict[str, Callable[[dict[str, object]], None]] = {
        "17 MiB": big,
        "created_at a number": lambda m: m.update(created_at=5),
        "created_at not a time": lambda m: m.update(created_at="yesterday"),
        "format_version a string": lambda m: m.update(format_version="1"),
        "a newer format_version": lambda m: m.update(format_version=99),
        "another format": lambda m: m.update(format="tar"),
        "payload salt not hex": lambda m: m["payload"].update(salt="zz"),  # type: ignore[attr-defined]
        "payload salt of 8 bytes": lambda m: m["payload"].update(salt="00" * 8),  # type: ignore[attr-defined]
    }
    for edit in cases.values():
        archive = reseal(
            target.archive,
            target.key,
            target.root / "archives" / "manifest.amsbak",
            inner=target.inner,
            manifest=edit,
        )
        _refused(target, archive, words=("manifest.json", "format version", "payload"))
    record(AREA, "manifest: 17 MiB, odd field types, a newer version", len(cases), "all refused")


def test_a_deeply_nested_manifest_is_refused_without_a_traceback(target: Target) -> None:
    """JSON nested deeper than the parser's recursion: `manifest.json is not valid JSON`."""
    path = target.root / "archives" / "deep.amsbak"
    real = target.archive.read_bytes()
    deep = b"[" * 200_000 + b"]" * 200_000
    # An outer tar whose manifest.json is the deep JSON (not sealed: it never gets that far).
    from ams.backup.archive import ArchiveWriter

    with open(path, "w+b") as handle:
        writer = ArchiveWriter(handle, int(tarfile.TarInfo.frombuf(real[:512], "utf-8", "strict").mtime))
        writer.add_bytes("manifest.json", deep)
        writer.add_bytes("payload.enc", b"x" * 100)
        writer.finish(target.key, "0" * 16)
    error_verify, error_restore = _refused(target, path, words=("manifest.json",))
    assert "not valid JSON" in error_verify.message
    result = run_ams("backup", "verify", str(path), home=target.home.root)
    assert result.returncode == 80 and "Traceback" not in result.stderr, result.stderr
    record(AREA, "manifest: JSON nested 200,000 deep", 1, "refused")


def test_hostile_outer_tars_are_refused(target: Target) -> None:
    """The outer tar as `tar` would write hostile members: names with ../, absolute names, a
    symbolic link, a hard link: refused at the first header, before the seal."""
    archives = target.root / "archives"
    cases = {
        "../manifest.json": tarfile.REGTYPE,
        "/manifest.json": tarfile.REGTYPE,
        "manifest.json": tarfile.SYMTYPE,
        "manifest.json ": tarfile.LNKTYPE,
    }
    for n, (name, kind) in enumerate(cases.items()):
        path = archives / f"outer-{n}.amsbak"
        with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
            info = tarfile.TarInfo(name.strip())
            info.type = kind
            info.linkname = "/etc/passwd" if kind != tarfile.REGTYPE else ""
            data = b"{}" if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        _refused(target, path)
    record(AREA, "outer tar: ../, absolute, symbolic and hard link members", len(cases), "all refused")


MEMORY_SCRIPT = r"""
import sys
from pathlib import Path
from ams import backup
from ams.errors import AMSError
from ams.home import Home
from ams.instance import open_instance


def peak_kib():
    # This process's own peak resident size (VmHWM): unlike ru_maxrss, not inherited from
    # the parent that spawned it.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise SystemExit("no VmHWM")


home = Home(Path(sys.argv[1]))
instance = open_instance(home)
import ams.backup.restore, ams.backup.verify  # loaded before the baseline
baseline = peak_kib()
for name in sys.argv[2:]:
    for call in (lambda: backup.verify_backup(Path(name), instance=instance),
                 lambda: backup.restore_backup(Path(name), home, actor="test")):
        try:
            call()
        except AMSError as exc:
            print(exc.code, file=sys.stderr)
        else:
            print("accepted", name, file=sys.stderr)
instance.close()
print(baseline, peak_kib())
"""


def test_memory_stays_bounded(target: Target, tmp_path: Path) -> None:
    """A subprocess verifies and restores archives declaring (or holding) far more than it
    could keep in memory: 8 GiB declared, 1 GiB gzipped, a 48 MiB manifest, a 64 MiB file of
    zeros behind a duplicate name. Its peak resident memory (VmHWM) grows by less than 32 MiB."""
    archives = target.root / "archives"
    zeros = bytes(1 << 20)

    def produce(sink: object) -> None:
        write = sink.write  # type: ignore[attr-defined]
        for member in _members(target.inner):
            write(member)
        write(tar_member("config/zeros", size=64 << 20)[:512])
        for _ in range(64):
            write(zeros)
        write(tar_member("config/ams.toml", b"x"))  # refused after the zeros went through
        write(tar_end())

    big_file = reseal(target.archive, target.key, archives / "zeros.amsbak", produce=produce)
    declared = _with(target, "declared", [tar_member("config/big", b"x" * 100, size=8 << 30)])
    bomb = _gzip_bomb()
    gzipped = reseal(target.archive, target.key, archives / "bomb.amsbak", inner=bomb)
    manifest = reseal(
        target.archive,
        target.key,
        archives / "huge-manifest.amsbak",
        inner=target.inner,
        manifest=lambda m: m.update(padding="p" * (48 << 20)),
    )
    paths = [big_file, declared, gzipped, manifest]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMS_")}
    before = _outside(target)
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(target.home.root), *map(str, paths)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "accepted" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert set(proc.stderr.split()) <= CODES, proc.stderr
    baseline, peak = map(int, proc.stdout.split())
    assert baseline > 20 * 1024  # the interpreter, AMS and SQLAlchemy loaded: a real reading
    assert len(proc.stderr.split()) == len(paths) * 2  # every archive reached both calls
    grew_mib = (peak - baseline) / 1024
    assert grew_mib < 32, f"peak memory grew by {grew_mib:.0f} MiB"
    assert _outside(target) == before
    record(
        AREA,
        "memory: 8 GiB declared, 1 GiB gzip bomb, 48 MiB manifest, 64 MiB file behind a duplicate",
        len(paths) * 2,
        f"all refused; peak resident memory {peak // 1024} MiB, {grew_mib:.0f} MiB above the baseline",
    )
