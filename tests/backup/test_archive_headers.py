"""Issue 18 item 2: every byte of the outer tar's headers is checked, and a restore takes no
mode, owner or time from either tar.

One small archive is built once; the exhaustive loops flip bytes in memory and call the verify
function in-process; a handful of representative cases go through the real `ams backup verify`
and `ams backup restore` commands.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import stat
import tarfile
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from ams import backup
from ams.backup.archive import (
    MANIFEST,
    MEMBERS,
    PAYLOAD,
    SEALED,
    ArchiveReader,
    ArchiveWriter,
    archive_mtime,
    iter_payload_members,
)
from ams.backup.archive import _header as canonical_header
from ams.clock import ManualClock
from ams.errors import BackupInvalid
from ams.home import Home
from ams.instance import Instance, create_instance, open_instance
from conftest import RECOVERY_PASSWORD, run_ams, tree_digest

_BLOCK = 512


class Built:
    """The archive's bytes, with where each header starts and each member's data."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.headers: dict[str, int] = {}
        self.members: dict[str, bytes] = {}
        at = 0
        for name in MEMBERS:
            info = tarfile.TarInfo.frombuf(data[at : at + _BLOCK], "utf-8", "strict")
            self.headers[name] = at
            self.members[name] = data[at + _BLOCK : at + _BLOCK + info.size]
            at += _BLOCK + info.size + (-info.size % _BLOCK)
        self.end = at  # the two end-of-archive blocks
        self.mtime = archive_mtime(datetime.fromisoformat(json.loads(self.members[MANIFEST])["created_at"]))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Instance, Built, Path]]:
    """One instance and one backup of it for the whole module (tests copy, never change, them)."""
    root = tmp_path_factory.mktemp("headers")
    home = Home(root / "home")
    clock = ManualClock()
    create_instance(home, recovery_password=RECOVERY_PASSWORD, actor="test", clock=clock)
    instance = open_instance(home, clock)
    script = home.config_dir / "scripts" / "hook.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o700)
    try:
        path = backup.create_backup(instance, actor="test", dest=root / "backups").path
        yield instance, Built(path.read_bytes()), root
    finally:
        instance.close()


def _fix_checksum(block: bytearray) -> bytearray:
    """Recompute a header's checksum as tar does: what an attacker does after rewriting it."""
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return block


def _rewritten(data: bytes, at: int, edit: Callable[[bytearray], None]) -> bytes:
    block = bytearray(data[at : at + _BLOCK])
    edit(block)
    _fix_checksum(block)
    return data[:at] + bytes(block) + data[at + _BLOCK :]


def _field(offset: int, value: bytes) -> Callable[[bytearray], None]:
    def edit(block: bytearray) -> None:
        block[offset : offset + len(value)] = value

    return edit


def _refusal(instance: Instance, path: Path, data: bytes) -> BackupInvalid:
    path.write_bytes(data)
    with pytest.raises(BackupInvalid) as caught:
        backup.verify_backup(path, instance=instance)
    return caught.value


def test_the_canonical_header_is_the_documented_byte_layout() -> None:
    """The bytes docs/formats.md describes, pinned: an AMS or Python upgrade cannot drift from
    them (every archive written so far has these headers, so the format version stays 1)."""
    expected = bytearray(_BLOCK)
    expected[0:13] = b"manifest.json"
    expected[100:108] = b"0000600\0"
    expected[108:116] = b"0000000\0"
    expected[116:124] = b"0000000\0"
    expected[124:136] = b"00000004321\0"
    expected[136:148] = b"15125334120\0"
    expected[156:157] = b"0"
    expected[257:265] = b"ustar  \0"  # GNU magic and version; all else zero
    _fix_checksum(expected)
    assert canonical_header(MANIFEST, 0o4321, 1767225424) == bytes(expected)


def test_every_bit_of_every_header_block_is_refused_naming_the_member(
    built: tuple[Instance, Built, Path], tmp_path: Path
) -> None:
    instance, archive, _root = built
    path = tmp_path / "flipped.amsbak"
    path.write_bytes(archive.data)
    assert backup.verify_backup(path, instance=instance)["ok"]
    target = Home(tmp_path / "restored")
    messages: set[str] = set()
    # Every bit of every header byte, flipped in place, against the reader verify and
    # restore both open first (before they read a key or write anything).
    with open(path, "r+b") as handle:
        fd = handle.fileno()
        for name, start in archive.headers.items():
            for pos in range(start, start + _BLOCK):
                for bit in range(8):
                    os.pwrite(fd, bytes([archive.data[pos] ^ (1 << bit)]), pos)
                    with pytest.raises(BackupInvalid) as caught:
                        ArchiveReader(path)
                    assert name in caught.value.message, (name, pos - start, bit, caught.value.message)
                    messages.add(caught.value.message.replace(name, "X"))
                os.pwrite(fd, archive.data[pos : pos + 1], pos)
    # The flips that keep tar's checksum valid (after the NUL that ends it, say) were caught
    # by the canonical header rule, which names the field.
    assert any("was altered (checksum differs" in m for m in messages), messages
    assert any("bad checksum" in m for m in messages)
    # Through the verify and restore functions, a seeded bit of every byte of every header.
    for name, start in archive.headers.items():
        rng = random.Random(f"18.2 {name}")
        for pos in range(start, start + _BLOCK):
            tampered = bytearray(archive.data)
            tampered[pos] ^= 1 << rng.randrange(8)
            error = _refusal(instance, path, bytes(tampered))
            assert name in error.message
            with pytest.raises(BackupInvalid, match=re.escape(error.message)):
                backup.restore_backup(path, target, actor="test", password=lambda _hint: RECOVERY_PASSWORD)
            assert not target.root.exists()


_REWRITES: list[tuple[str, Callable[[bytearray], None], str]] = [
    ("owner name", _field(265, b"root"), "owner name"),
    ("group name", _field(297, b"wheel"), "group name"),
    ("owner id", _field(108, b"0001750\0"), "owner id"),
    ("group id", _field(116, b"0001750\0"), "group id"),
    ("mtime 0", _field(136, b"00000000000\0"), "mtime"),
    ("mode 4777", _field(100, b"0004777\0"), "mode"),
    ("mode 0644", _field(100, b"0000644\0"), "mode"),
    ("type flag 7", _field(156, b"7"), "regular file"),
    ("type flag NUL", _field(156, b"\0"), "regular file"),
    ("type flag symlink", _field(156, b"2"), "regular file"),
    ("link name", _field(157, b"/etc/passwd"), "link name"),
    ("name padding", _field(99, b"A"), "name"),
    ("magic ustar", _field(257, b"ustar\x0000"), "magic"),
    ("device major", _field(329, b"0000001\0"), "device numbers"),
    ("prefix (GNU atime)", _field(345, b"15125334120\0"), "was expected"),
    ("GNU real size", _field(483, b"00000000001\0"), "unused tail"),
    ("last byte", _field(511, b"\x01"), "unused tail"),
    ("size + 1", lambda b: b.__setitem__(slice(124, 136), b"%011o\0" % (int(b[124:135], 8) + 1)), ""),
    ("checksum as 7 digits", lambda b: None, "checksum"),  # the same sum: done in the test
]


@pytest.mark.parametrize(("what", "edit", "named"), _REWRITES, ids=[r[0] for r in _REWRITES])
def test_a_rewritten_header_with_a_fixed_checksum_is_refused(
    built: tuple[Instance, Built, Path],
    tmp_path: Path,
    what: str,
    edit: Callable[[bytearray], None],
    named: str,
) -> None:
    instance, archive, _root = built
    path = tmp_path / "rewritten.amsbak"
    for name, start in archive.headers.items():
        if what.startswith("checksum"):
            block = _fix_checksum(bytearray(archive.data[start : start + _BLOCK]))
            block[148:156] = b"%07o\0" % int(block[148:154], 8)  # the same sum, spelt otherwise
            data = archive.data[:start] + bytes(block) + archive.data[start + _BLOCK :]
        else:
            data = _rewritten(archive.data, start, edit)
        assert data != archive.data
        error = _refusal(instance, path, data)
        assert name in error.message and named in error.message, (what, error.message)


def test_the_same_time_rewritten_in_every_header_is_refused(
    built: tuple[Instance, Built, Path], tmp_path: Path
) -> None:
    """A consistent rewrite of all four mtimes still contradicts the sealed manifest."""
    instance, archive, _root = built
    data = archive.data
    for start in archive.headers.values():
        data = _rewritten(data, start, _field(136, b"%011o\0" % (archive.mtime + 3600)))
    error = _refusal(instance, tmp_path / "times.amsbak", data)
    assert (
        error.message
        == "the tar header of manifest.json was altered (its mtime is not the backup's created_at)"
    )


def _rebuild(members: dict[str, bytes], mtime: int, before: dict[str, bytes] | None = None) -> bytes:
    """The archive from its members' bytes, with canonical headers; ``before`` inserts blocks."""
    out = io.BytesIO()
    for name in MEMBERS:
        out.write((before or {}).get(name, b""))
        out.write(canonical_header(name, len(members[name]), mtime))
        out.write(members[name] + bytes(-len(members[name]) % _BLOCK))
    out.write(bytes(2 * _BLOCK))
    return out.getvalue()


def _pax(name: str, records: dict[str, str], mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.pax_headers = records
    info.mtime = mtime
    info.mode = 0o600
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


def test_extra_headers_end_blocks_and_trailing_bytes_are_refused(
    built: tuple[Instance, Built, Path], tmp_path: Path
) -> None:
    instance, archive, _root = built
    path = tmp_path / "extra.amsbak"
    assert _rebuild(archive.members, archive.mtime) == archive.data  # the format is deterministic
    cases: dict[str, tuple[bytes, str]] = {}
    for name in MEMBERS:
        # A pax extended header (owner, mode, times) or a GNU long name before a member.
        pax = _pax(name, {"uname": "root", "mtime": "0", "path": name}, archive.mtime)
        cases[f"pax {name}"] = (_rebuild(archive.members, archive.mtime, {name: pax[:-_BLOCK]}), name)
        long_name = tarfile.TarInfo(name + "/" + "x" * 120).tobuf(tarfile.GNU_FORMAT)
        cases[f"long {name}"] = (_rebuild(archive.members, archive.mtime, {name: long_name[:-_BLOCK]}), name)
    for extra, label in ((b"\0", "a byte"), (bytes(_BLOCK), "a block"), (bytes(10240 - 3072), "a record")):
        cases[f"trailing {label}"] = (archive.data + extra, "after its end-of-archive blocks")
    cases["one end block"] = (archive.data[:-_BLOCK], "truncated")
    for case, (data, named) in cases.items():
        assert named in _refusal(instance, path, data).message, case
    # A seeded bit of every byte of the end blocks, and of the zero padding after each member.
    rng = random.Random("18.2 zeros")
    zeros = list(range(archive.end, len(archive.data)))
    for name, start in archive.headers.items():
        size = len(archive.members[name])
        zeros += range(start + _BLOCK + size, start + _BLOCK + size + (-size % _BLOCK))
    for pos in zeros:
        tampered = bytearray(archive.data)
        tampered[pos] ^= 1 << rng.randrange(8)
        message = _refusal(instance, path, bytes(tampered)).message
        assert "end-of-archive" in message or "padding after" in message, (pos, message)


_SEAL_EDITS: dict[str, Callable[[bytes], bytes]] = {
    "space before the hmac": lambda s: s.replace(b'"hmac": "', b'"hmac": " '),
    "hmac in capitals": lambda s: re.sub(
        rb'"hmac": "([0-9a-f]+)"', lambda m: b'"hmac": "%s"' % m[1].upper(), s
    ),
    "algorithm": lambda s: s.replace(b"HMAC-SHA256", b"HMAC-MD5"),
    "fingerprint": lambda s: re.sub(
        rb'"master_key_fingerprint": "[0-9a-f]+"', b'"master_key_fingerprint": "0"', s
    ),
    "indent": lambda s: s.replace(b"  ", b" "),
    "final newline": lambda s: s[:-1],
    "extra field": lambda s: s.replace(b"{", b'{\n  "note": "hello",'),
}


@pytest.mark.parametrize("edit", _SEAL_EDITS.values(), ids=_SEAL_EDITS.keys())
def test_a_rewritten_seal_file_is_refused(
    built: tuple[Instance, Built, Path], tmp_path: Path, edit: Callable[[bytes], bytes]
) -> None:
    instance, archive, _root = built
    members = dict(archive.members)
    members[SEALED] = edit(members[SEALED])
    assert members[SEALED] != archive.members[SEALED]
    error = _refusal(instance, tmp_path / "sealed.amsbak", _rebuild(members, archive.mtime))
    assert "SHA256SUMS.sealed" in error.message


# -- the real commands ---------------------------------------------------------------------


def test_the_commands_refuse_altered_headers_and_write_nothing(
    built: tuple[Instance, Built, Path], tmp_path: Path
) -> None:
    instance, archive, _root = built
    manifest_at = archive.headers[MANIFEST]
    payload_at = archive.headers[PAYLOAD]

    def issue_case(block: bytearray) -> None:  # the rewrite the issue reported
        block[265:269] = b"evil"
        block[136:148] = b"00000000000\0"
        block[100:108] = b"0004777\0"

    flip = bytearray(archive.data)
    flip[payload_at + 155] ^= 0x01  # after the checksum's NUL: tar's own check passes
    cases = {
        "rewritten": (
            _rewritten(archive.data, manifest_at, issue_case),
            "the tar header of manifest.json was altered (mode and owner name differ",
        ),
        "flipped": (bytes(flip), "the tar header of payload.enc was altered (checksum differs"),
        "pax": (
            _rebuild(archive.members, archive.mtime, {MANIFEST: _pax(MANIFEST, {"uname": "root"}, 0)[:-512]}),
            "where manifest.json was expected",
        ),
        "trailing": (archive.data + b"\n", "data after its end-of-archive blocks"),
    }
    home = instance.home.root
    before = tree_digest(home)
    for case, (data, named) in cases.items():
        path = tmp_path / f"{case}.amsbak"
        path.write_bytes(data)
        checked = run_ams(
            "backup",
            "verify",
            str(path),
            *(["--deep"] if case == "flipped" else []),  # --deep let this one through before
            "--password-stdin",
            home=tmp_path / "none",
            input=RECOVERY_PASSWORD + "\n",
        )
        assert checked.returncode == 80 and named in checked.stderr, (case, checked)
        assert "Traceback" not in checked.stderr + checked.stdout and checked.stderr.count("\n") == 1
        if case in ("rewritten", "pax"):  # over the current instance
            restored = run_ams("backup", "restore", str(path), "--yes", home=home)
        else:  # onto a new machine, with the recovery password
            elsewhere = tmp_path / f"new-{case}"
            restored = run_ams(
                "backup",
                "restore",
                str(path),
                "--password-stdin",
                home=elsewhere,
                input=RECOVERY_PASSWORD + "\n",
            )
            assert not elsewhere.exists()
        assert restored.returncode == 80 and named in restored.stderr, (case, restored)
        assert "Traceback" not in restored.stderr + restored.stdout and restored.stderr.count("\n") == 1
        assert path.read_bytes() == data and not (tmp_path / "none").exists()
    assert tree_digest(home) == before


# -- the inner tar --------------------------------------------------------------------------


def test_a_restore_applies_no_mode_owner_or_time_from_the_payload(
    built: tuple[Instance, Built, Path], tmp_path: Path
) -> None:
    """A properly sealed backup whose inner tar asks for setuid, world-writable files and
    folders, another owner and old times: what is restored is 0600/0700, ours, and new."""
    instance, archive, root = built
    original = root / "backups" / "original.amsbak"
    original.write_bytes(archive.data)
    mk = instance.keyring.master_key()
    manifest = json.loads(archive.members[MANIFEST])
    hostile = tmp_path / "hostile.amsbak"
    with ArchiveReader(original) as reader:
        stream = reader.payload(mk)

        def produce(sink: object) -> None:
            with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as inner:  # type: ignore[call-overload]
                for member, _parts, data in iter_payload_members(stream):  # type: ignore[arg-type]
                    member.mode = 0o7777 if member.isdir() else 0o6777
                    member.uid, member.gid, member.uname, member.gname = 4242, 4242, "evil", "evil"
                    member.mtime = 86400
                    member.pax_headers = {"mtime": "86400.5", "atime": "86400", "uname": "evil"}
                    body = io.BytesIO(b"".join(data)) if member.isreg() else None
                    inner.addfile(member, body)

        with open(hostile, "w+b") as handle:
            writer = ArchiveWriter(handle, archive.mtime)
            writer.add_bytes(MANIFEST, archive.members[MANIFEST])
            writer.write_payload(mk, produce, bytes.fromhex(manifest["payload"]["salt"]))
            writer.finish(mk, manifest["master_key_fingerprint"])
    home = Home(tmp_path / "restored")
    backup.restore_backup(hostile, home, actor="test", password=lambda _hint: RECOVERY_PASSWORD)
    restored = [p for root_dir in ("data", "config", "snapshots") for p in (home.root / root_dir).rglob("*")]
    assert any(p.name == "ams.toml" for p in restored) and any(p.is_dir() for p in restored)
    for path in restored:
        st = path.lstat()
        assert stat.S_IMODE(st.st_mode) == (0o700 if path.is_dir() else 0o600), path
        assert st.st_mtime > 86400 * 2, path
        assert st.st_uid != 4242 and st.st_gid != 4242
