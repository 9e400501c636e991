"""The ``.amsbak`` archive: writing it as a stream, and reading it strictly.

Layout (docs/formats.md, "Backup archive (.amsbak)"): a POSIX tar with exactly four regular
members, in this order::

    manifest.json       readable JSON: what the backup is, and the recovery wrapping of the MK
    payload.enc         the encrypted payload stream (ams.crypto.backupbox) of an inner tar
    SHA256SUMS          `sha256sum` lines for manifest.json and payload.enc
    SHA256SUMS.sealed   JSON with the HMAC-SHA256 of SHA256SUMS under a key derived from the MK

followed by exactly two zero blocks. The writer never seeks back except to fill in the size
of ``payload.enc`` once the stream is done, so memory stays flat whatever the size. The
reader parses the outer tar itself (not with :mod:`tarfile`) so every byte is accounted
for: each header block must be byte for byte the canonical one (:func:`_header`, its time
the manifest's ``created_at``), then the member list, the zero padding and the end blocks;
``SHA256SUMS.sealed`` must be exactly what the writer renders for its HMAC.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import queue
import re
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from ams import crypto
from ams.errors import (
    BackupInvalid,
    BackupUnsafe,
    BackupUnsupported,
    BadInput,
    DecryptionFailed,
    NotFound,
)

__all__ = [
    "FORMAT_VERSION",
    "MEMBERS",
    "ArchiveReader",
    "ArchiveWriter",
    "Manifest",
    "PAYLOAD_ROOTS",
    "archive_mtime",
    "extract_payload",
]

FORMAT = "ams-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PAYLOAD = "payload.enc"
SUMS = "SHA256SUMS"
SEALED = "SHA256SUMS.sealed"
MEMBERS = (MANIFEST, PAYLOAD, SUMS, SEALED)
PAYLOAD_ROOTS = ("database", "config", "snapshots")
_BLOCK = 512
_HMAC_HEX = re.compile("[0-9a-f]{64}")
_COPY = 1 << 20
_SYNC_EVERY = 8 << 20


def _writeback_function() -> Callable[[int, int, int], None] | None:
    """Linux's sync_file_range(2), to start writing a range to disk without waiting for it."""
    try:
        import ctypes

        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    return lambda fd, offset, length: function(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE


_WRITEBACK = _writeback_function()


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` bytes at ``offset`` now, without waiting.

    Not a durability promise (the final fsync is): it keeps the data flowing to disk while
    the rest is still being encrypted, so that fsync finds little left to do.
    """
    if _WRITEBACK is not None:
        _WRITEBACK(fd, offset, length)


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json``; :attr:`data` keeps every field as written."""

    data: dict[str, Any]

    @property
    def backup_id(self) -> str:
        return str(self.data["backup_id"])

    @property
    def instance_id(self) -> str:
        return str(self.data["instance_id"])

    @property
    def fingerprint(self) -> str:
        return str(self.data["master_key_fingerprint"])

    @property
    def schema_revision(self) -> str:
        return str(self.data["schema_revision"])

    @property
    def kind(self) -> str:
        return str(self.data["kind"])

    @property
    def created_at(self) -> datetime:
        return datetime.fromisoformat(self.data["created_at"])

    @property
    def recovery_password_set_at(self) -> str | None:
        value = self.data.get("recovery_password_set_at")
        return str(value) if value else None

    def recovery_wrapping(self) -> crypto.WrappedKey:
        wrapping = self.data.get("recovery_wrapping")
        if not isinstance(wrapping, dict):
            raise BackupInvalid("manifest.json holds no recovery wrapping of the master key")
        try:
            return crypto.WrappedKey.from_json(json.dumps(wrapping))
        except (DecryptionFailed, KeyError, TypeError, ValueError):
            raise BackupInvalid("the recovery wrapping in manifest.json is malformed") from None

    def payload_salt(self) -> bytes | None:
        """The payload's salt as the manifest records it; None for archives written before it was recorded."""
        payload = self.data.get("payload")
        salt = payload.get("salt") if isinstance(payload, dict) else None
        if salt is None:
            return None
        try:
            raw = bytes.fromhex(salt) if isinstance(salt, str) else b""
        except ValueError:
            raw = b""
        if len(raw) != 16:
            raise BackupInvalid("manifest.json names a malformed payload salt")
        return raw

    def needs_password_hint(self) -> str:
        when = self.recovery_password_set_at or "an unknown time"
        return f"the recovery password that was current when the backup was made (set at {when})"

    @classmethod
    def parse(cls, raw: bytes) -> Manifest:
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # nested too deep
            raise BackupInvalid("manifest.json is not valid JSON") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BackupInvalid("manifest.json is not an AMS backup manifest")
        version = data.get("format_version")
        if not isinstance(version, int):
            raise BackupInvalid("manifest.json has no format_version")
        if version > FORMAT_VERSION:
            raise BackupUnsupported(
                f"the backup has format version {version}, newer than this AMS reads ({FORMAT_VERSION}): "
                "restore it with a newer AMS"
            )
        for key in (
            "backup_id",
            "instance_id",
            "master_key_fingerprint",
            "schema_revision",
            "created_at",
            "kind",
        ):
            if not isinstance(data.get(key), str):
                raise BackupInvalid(f"manifest.json lacks the field {key!r}")
        try:
            datetime.fromisoformat(data["created_at"])
        except ValueError:
            raise BackupInvalid("manifest.json has a malformed created_at") from None
        return cls(data)


# -- writing --------------------------------------------------------------------------------


class _Worker:
    """One helper thread applying ``work`` to each item, in order, from a short queue.

    ``hashlib`` and file writes release the GIL, so hashing and writing overlap with reading
    and encrypting. At most a few chunks wait in the queue, so memory stays flat. An error in
    the thread is raised by the next :meth:`put` or by :meth:`close`.
    """

    def __init__(self, work: Callable[[bytes], object], name: str) -> None:
        self._work = work
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._work(item)
                except BaseException as exc:  # noqa: BLE001 - handed to the producer
                    self._error = exc

    def put(self, data: bytes) -> None:
        if self._closed:
            raise ValueError("put after close")
        if self._error is not None:
            raise self._error
        self._queue.put(data)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error


class _BackgroundHash:
    """SHA-256 of a stream, computed by a :class:`_Worker`."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._worker = _Worker(self._digest.update, "ams-backup-sha256")
        self._result: str | None = None

    def update(self, data: bytes) -> None:
        self._worker.put(data)

    def hexdigest(self) -> str:
        if self._result is None:
            self._worker.close()
            self._result = self._digest.hexdigest()
        return self._result

    close = hexdigest


class _Sink:
    """Writes to the file and hashes what it wrote, each in its own thread.

    Every ``_SYNC_EVERY`` bytes the writer starts the disk writes of what it wrote
    (:func:`_start_writeback`), so the final fsync does not meet a gigabyte at once.
    """

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.digest = _BackgroundHash()
        self.size = 0
        self._unsynced = 0
        self._writer = _Worker(self._write, "ams-backup-writer")

    def _write(self, data: bytes) -> None:
        self.handle.write(data)
        self.digest.update(data)
        self._unsynced += len(data)
        if self._unsynced >= _SYNC_EVERY:
            self.handle.flush()
            _start_writeback(self.handle.fileno(), self.handle.tell() - self._unsynced, self._unsynced)
            self._unsynced = 0

    def write(self, data: bytes) -> int:
        self._writer.put(data)
        self.size += len(data)
        return len(data)

    def close(self) -> str:
        """Wait for the writes; return the SHA-256 of everything written."""
        try:
            self._writer.close()
        finally:
            digest = self.digest.hexdigest()
        return digest


def _header(name: str, size: int, mtime: int) -> bytes:
    """The canonical header of a member: the only one the writer writes and the reader accepts.

    GNU format, mode 0600, owner and group 0 with empty names, regular file, no link name,
    and every unused byte zero (docs/formats.md, "Canonical headers").
    """
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o600
    info.type = tarfile.REGTYPE
    return info.tobuf(format=tarfile.GNU_FORMAT, encoding="utf-8", errors="strict")


# The fields of a GNU tar header (offset, length, name), to say which one was altered.
_HEADER_FIELDS = (
    (0, 100, "name"),
    (100, 8, "mode"),
    (108, 8, "owner id"),
    (116, 8, "group id"),
    (124, 12, "size"),
    (136, 12, "mtime"),
    (148, 8, "checksum"),
    (156, 1, "type flag"),
    (157, 100, "link name"),
    (257, 8, "magic"),
    (265, 32, "owner name"),
    (297, 32, "group name"),
    (329, 16, "device numbers"),
    (345, 167, "unused tail"),
)


def _altered_fields(block: bytes, canonical: bytes) -> str:
    """Which fields differ, as "mode and owner name differ". The checksum changes with any
    other field, so it is named only when it alone differs."""
    fields = [n for at, size, n in _HEADER_FIELDS if block[at : at + size] != canonical[at : at + size]]
    if len(fields) > 1 and "checksum" in fields:
        fields.remove("checksum")
    if len(fields) == 1:
        return f"{fields[0]} differs"
    return f"{', '.join(fields[:-1])} and {fields[-1]} differ"


def archive_mtime(created_at: datetime) -> int:
    """The mtime of every outer header: the backup's creation time, in whole seconds."""
    return int(created_at.timestamp())


def _sealed_bytes(fingerprint: str, hmac_hex: str) -> bytes:
    """``SHA256SUMS.sealed`` as the writer renders it; the reader accepts nothing else."""
    sealed = {
        "algorithm": "HMAC-SHA256",
        "key": "HKDF-SHA256(master key, info=ams/derived/v1/backup-seal)",
        "master_key_fingerprint": fingerprint,
        "hmac": hmac_hex,
    }
    return (json.dumps(sealed, indent=2, sort_keys=True) + "\n").encode("ascii")


class ArchiveWriter:
    """Writes the outer tar to an open, seekable file."""

    def __init__(self, handle: BinaryIO, mtime: int) -> None:
        self.handle = handle
        self.mtime = mtime
        self.sums: dict[str, str] = {}

    def _pad(self, size: int) -> None:
        rest = size % _BLOCK
        if rest:
            self.handle.write(b"\0" * (_BLOCK - rest))

    def add_bytes(self, name: str, data: bytes) -> None:
        self.handle.write(_header(name, len(data), self.mtime))
        self.handle.write(data)
        self._pad(len(data))
        self.sums[name] = hashlib.sha256(data).hexdigest()

    def write_payload(
        self, master_key: bytes, produce: Callable[[BinaryIO], None], salt: bytes | None = None
    ) -> int:
        """Encrypt what ``produce`` writes into ``payload.enc``; return its size."""
        start = self.handle.tell()
        self.handle.write(_header(PAYLOAD, 0, self.mtime))  # size filled in below
        sink = _Sink(self.handle)
        try:
            writer = crypto.PayloadWriter(sink, master_key, salt=salt)  # type: ignore[arg-type]
            produce(writer)  # type: ignore[arg-type]
            writer.close()
        finally:
            digest = sink.close()
        end = self.handle.tell()
        self.handle.seek(start)
        self.handle.write(_header(PAYLOAD, sink.size, self.mtime))
        self.handle.seek(end)
        self._pad(sink.size)
        self.sums[PAYLOAD] = digest
        return sink.size

    def sums_bytes(self) -> bytes:
        return "".join(f"{self.sums[n]}  {n}\n" for n in (MANIFEST, PAYLOAD)).encode("ascii")

    def finish(self, master_key: bytes, fingerprint: str) -> None:
        sums = self.sums_bytes()
        self.add_bytes(SUMS, sums)
        self.add_bytes(SEALED, _sealed_bytes(fingerprint, crypto.seal_sums(master_key, sums)))
        self.handle.write(b"\0" * (2 * _BLOCK))


# -- reading --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Member:
    name: str
    offset: int
    size: int


class _Window:
    """A file object over one member's bytes, hashing what is read.

    Reads use ``pread`` (no shared file position) and each one starts the next read of the
    same size in a helper thread, so reading the archive overlaps with decrypting it.
    """

    def __init__(self, handle: BinaryIO, member: _Member, hashed: bool = True) -> None:
        self.handle = handle
        self.left = member.size
        self._offset = member.offset
        self.digest = _BackgroundHash() if hashed else None
        self._ahead: concurrent.futures.Future[bytes] | None = None
        self._ahead_size = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ams-backup-read")

    def _pread(self, size: int, offset: int) -> bytes:
        return os.pread(self.handle.fileno(), size, offset)

    def read(self, size: int = -1) -> bytes:
        want = self.left if size < 0 else min(size, self.left)
        if not want:
            return b""
        if self._ahead is not None and self._ahead_size == want:
            data = self._ahead.result()
        else:
            if self._ahead is not None:
                self._ahead.result()  # a read of another size: drop it
            data = self._pread(want, self._offset)
        self._ahead = None
        self._offset += len(data)
        self.left -= len(data)
        if self.digest is not None:
            self.digest.update(data)
        following = min(want, self.left)
        if following and len(data) == want:
            self._ahead_size = following
            self._ahead = self._pool.submit(self._pread, following, self._offset)
        return data

    def close(self) -> None:
        if self._ahead is not None:
            with contextlib.suppress(Exception):
                self._ahead.result()
            self._ahead = None
        self._pool.shutdown(wait=True)
        if self.digest is not None:
            self.digest.close()


class ArchiveReader:
    """Open a ``.amsbak`` and check its structure and sums (no key needed for that)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._streams: list[_PayloadStream] = []
        try:
            self.handle: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed in close()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"{path} does not exist: give the path of a .amsbak file") from None
        except IsADirectoryError:
            raise BadInput(f"{path} is a folder: give the path of a .amsbak file") from None
        except PermissionError:
            raise BadInput(f"{path} cannot be read: permission denied") from None
        try:
            self.members, mtimes = self._parse()
            self.manifest = Manifest.parse(self._read_member(MANIFEST))
            self._check_mtimes(mtimes)
            self.sums_raw = self._read_member(SUMS)
            self.sealed = self._parse_sealed(self._read_member(SEALED), self.manifest.fingerprint)
        except BaseException:
            self.handle.close()
            raise

    def close(self) -> None:
        for stream in self._streams:
            stream.close()
        self.handle.close()

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _parse(self) -> tuple[dict[str, _Member], dict[str, int]]:
        """The members, and the mtime of each header (checked against the manifest after)."""
        size = os.fstat(self.handle.fileno()).st_size
        members: dict[str, _Member] = {}
        mtimes: dict[str, int] = {}
        offset = 0
        for expected in MEMBERS:
            self.handle.seek(offset)
            block = self.handle.read(_BLOCK)
            if len(block) < _BLOCK or block == b"\0" * _BLOCK:
                raise BackupInvalid(f"the archive is truncated or incomplete: {expected} is missing")
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
            except (tarfile.HeaderError, UnicodeDecodeError):
                if offset == 0:
                    raise BackupInvalid(
                        f"{self.path} is not an AMS backup (.amsbak): not a tar archive, or the tar "
                        "header of manifest.json is damaged (bad checksum)"
                    ) from None
                raise BackupInvalid(f"the tar header of {expected} is damaged (bad checksum)") from None
            if info.name != expected:
                raise BackupInvalid(f"the archive holds {info.name!r} where {expected} was expected")
            if info.type != tarfile.REGTYPE:
                raise BackupUnsafe(f"the archive member {info.name} is not a regular file")
            try:
                canonical = _header(expected, info.size, int(info.mtime))
            except ValueError:  # a size or time no canonical header can hold
                canonical = bytes(_BLOCK)
            if block != canonical:
                raise BackupInvalid(
                    f"the tar header of {expected} was altered ({_altered_fields(block, canonical)} "
                    "from the canonical header AMS writes)"
                )
            mtimes[expected] = int(info.mtime)
            data_at = offset + _BLOCK
            end = data_at + info.size
            if end > size:
                raise BackupInvalid(f"the archive is truncated inside {expected}")
            padded = end + (-info.size % _BLOCK)
            self.handle.seek(end)
            if self.handle.read(padded - end) != b"\0" * (padded - end):
                raise BackupInvalid(f"the padding after {expected} was altered")
            members[expected] = _Member(expected, data_at, info.size)
            offset = padded
        self.handle.seek(offset)
        tail = self.handle.read()
        if len(tail) < 2 * _BLOCK:
            raise BackupInvalid("the archive is truncated: its end-of-archive blocks are missing")
        if tail != b"\0" * len(tail) or len(tail) != 2 * _BLOCK:
            raise BackupInvalid("the archive has data after its end-of-archive blocks")
        return members, mtimes

    def _check_mtimes(self, mtimes: dict[str, int]) -> None:
        """Every header's time is the (summed and sealed) manifest's ``created_at``."""
        expected = archive_mtime(self.manifest.created_at)
        for name in MEMBERS:
            if mtimes[name] != expected:
                raise BackupInvalid(
                    f"the tar header of {name} was altered (its mtime is not the backup's created_at)"
                )

    def _read_member(self, name: str) -> bytes:
        member = self.members[name]
        if member.size > 16 << 20:
            raise BackupInvalid(f"{name} is implausibly large")
        self.handle.seek(member.offset)
        return self.handle.read(member.size)

    @staticmethod
    def _parse_sealed(raw: bytes, fingerprint: str) -> dict[str, Any]:
        try:
            data = json.loads(raw.decode("ascii"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise BackupInvalid("SHA256SUMS.sealed is not valid JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("hmac"), str):
            raise BackupInvalid("SHA256SUMS.sealed holds no HMAC")
        if not _HMAC_HEX.fullmatch(data["hmac"]):
            raise BackupInvalid("SHA256SUMS.sealed was altered: its HMAC is not 64 lowercase hex digits")
        if raw != _sealed_bytes(fingerprint, data["hmac"]):
            raise BackupInvalid(
                "SHA256SUMS.sealed was altered: it differs from what AMS writes for this backup's "
                "master key fingerprint and HMAC"
            )
        return data

    def expected_sums(self) -> dict[str, str]:
        out: dict[str, str] = {}
        try:
            text = self.sums_raw.decode("ascii")
        except UnicodeDecodeError:
            raise BackupInvalid("SHA256SUMS is malformed") from None
        for line in text.splitlines():
            digest, sep, name = line.partition("  ")
            if not sep or len(digest) != 64 or name not in (MANIFEST, PAYLOAD) or name in out:
                raise BackupInvalid("SHA256SUMS is malformed")
            out[name] = digest
        if set(out) != {MANIFEST, PAYLOAD}:
            raise BackupInvalid("SHA256SUMS does not list manifest.json and payload.enc")
        return out

    def check_manifest_sum(self) -> None:
        expected = self.expected_sums()[MANIFEST]
        if hashlib.sha256(self._read_member(MANIFEST)).hexdigest() != expected:
            raise BackupInvalid("manifest.json does not match its SHA256SUMS entry: the archive was altered")

    def check_seal(self, master_key: bytes) -> None:
        if not crypto.verify_sums_seal(master_key, self.sums_raw, self.sealed["hmac"]):
            raise BackupInvalid(
                "SHA256SUMS.sealed does not match: the archive was altered, or it was not made with "
                "this master key"
            )

    def payload(self, master_key: bytes, *, hashed: bool = True) -> _PayloadStream:
        """The decrypted payload. Call :meth:`check_seal` first: ``hashed=False`` relies on it."""
        stream = _PayloadStream(self, master_key, hashed)
        self._streams.append(stream)
        return stream


class _PayloadStream:
    """The decrypted payload as a file object; :meth:`finish` checks the payload's sum.

    With ``hashed=False`` the SHA-256 of ``payload.enc`` is not computed. That is only
    offered when the (sealed) manifest names the payload's salt: the payload key is derived
    from it and every chunk authenticates its index and whether it is the last, so a payload
    that opens under that salt and ends on its final chunk is exactly the one the backup
    wrote, with no need to hash it again.
    """

    def __init__(self, reader: ArchiveReader, master_key: bytes, hashed: bool = True) -> None:
        self._reader = reader
        salt = reader.manifest.payload_salt()
        self._hashed = hashed or salt is None
        self._window = _Window(reader.handle, reader.members[PAYLOAD], self._hashed)
        try:
            self._plain = crypto.PayloadReader(self._window, master_key)  # type: ignore[arg-type]
        except DecryptionFailed as exc:
            self.close()
            raise BackupInvalid(f"payload.enc: {exc.message}") from None
        if salt is not None and self._plain.salt != salt:
            self.close()
            raise BackupInvalid(
                "payload.enc is not the payload manifest.json describes (another salt): the archive "
                "was altered"
            )

    def close(self) -> None:
        """Stop the helper threads (also when the stream was abandoned on an error)."""
        self._window.close()

    def read(self, size: int = -1) -> bytes:
        try:
            return self._plain.read(size)
        except DecryptionFailed as exc:
            raise BackupInvalid(f"payload.enc: {exc.message}") from None

    def chunks(self) -> Iterator[bytes]:
        """The decrypted payload, chunk by chunk (no copies)."""
        try:
            yield from self._plain.chunks()
        except DecryptionFailed as exc:
            raise BackupInvalid(f"payload.enc: {exc.message}") from None

    def finish(self) -> None:
        """Drain what is left and compare the payload's SHA-256 with SHA256SUMS."""
        while self.read(_COPY):
            pass
        if self._window.digest is None:
            return  # bound to the sealed manifest by its salt (see the class)
        if self._window.digest.hexdigest() != self._reader.expected_sums()[PAYLOAD]:
            raise BackupInvalid("payload.enc does not match its SHA256SUMS entry: the archive was altered")


# -- the inner tar ------------------------------------------------------------------------


def _safe_parts(name: str) -> tuple[str, ...]:
    if "\\" in name or "\0" in name:
        raise BackupUnsafe(f"the backup holds a path with a backslash or NUL ({name!r}); it was refused")
    path = PurePosixPath(name)
    if path.is_absolute():
        raise BackupUnsafe(f"the backup holds an absolute path ({name!r}); it was refused")
    parts = tuple(p for p in path.parts if p not in ("", "."))
    if any(p == ".." for p in parts):
        raise BackupUnsafe(f"the backup holds a path leaving its folder ({name!r}); it was refused")
    if not parts or parts[0] not in PAYLOAD_ROOTS:
        raise BackupUnsafe(f"the backup holds an unexpected path ({name!r}); it was refused")
    return parts


class _Pieces:
    """The decrypted payload as views into its chunks, handed out in exact amounts."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._view = memoryview(b"")

    def _more(self) -> bool:
        while not self._view:
            chunk = next(self._chunks, None)
            if chunk is None:
                return False
            self._view = memoryview(chunk)
        return True

    def pieces(self, size: int) -> Iterator[memoryview]:
        while size:
            if not self._more():
                raise BackupInvalid("the payload's inner archive is truncated")
            piece = self._view[:size]
            self._view = self._view[len(piece) :]
            size -= len(piece)
            yield piece

    def take(self, size: int) -> bytes:
        return b"".join(self.pieces(size))

    def rest_is_zero(self) -> bool:
        zero = True
        while self._more():
            zero = zero and not any(self._view)
            self._view = memoryview(b"")
        return zero


def _pax_records(data: bytes) -> dict[str, str]:
    """The records of a pax extended header: ``"%d %s=%s\n"``, the length counting itself."""
    records: dict[str, str] = {}
    at = 0
    try:
        while at < len(data) and data[at] != 0:
            space = data.index(b" ", at)
            length = int(data[at:space])
            record = data[space + 1 : at + length]
            if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
                raise ValueError(record)
            key, _, value = record[:-1].partition(b"=")
            records[key.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
            at += length
    except (ValueError, UnicodeDecodeError):
        raise BackupInvalid("the payload's inner archive holds a malformed pax header") from None
    return records


def _refuse_kind(member: tarfile.TarInfo) -> None:
    what = (
        "a symbolic link"
        if member.issym()
        else "a hard link"
        if member.islnk()
        else "a device file"
        if member.ischr() or member.isblk()
        else "a special file"
        if member.isfifo()
        else f"a member of unexpected type {member.type!r}"
    )
    raise BackupUnsafe(f"the backup holds {what} ({member.name!r}); it was refused")


def _check_unique(seen: dict[tuple[str, ...], bool], parts: tuple[str, ...], member: tarfile.TarInfo) -> None:
    """A path is given once: a file never twice, never where a folder is, and never under a
    file (a folder may be named again). Checked as the members are read, so verify refuses
    what restore would (docs/formats.md: "a name given twice")."""
    for depth in range(1, len(parts)):
        if seen.setdefault(parts[:depth], True) is False:
            raise BackupUnsafe(
                f"the backup holds {member.name!r} under a file of the same name; it was refused"
            )
    folder = member.isdir()
    if parts in seen and not (folder and seen[parts]):
        raise BackupUnsafe(f"the backup holds {member.name!r} twice; it was refused")
    seen[parts] = folder


def iter_payload_members(
    stream: BinaryIO,
) -> Iterator[tuple[tarfile.TarInfo, tuple[str, ...], Iterator[memoryview]]]:
    """Every member of the inner tar, checked for safety before it is handed out, with its data.

    The inner tar is read here, strictly: regular files and folders only (pax extended
    headers may name them), then two zero blocks and nothing but zeros. A member's data
    comes as views into the decrypted chunks; what the caller leaves unread is skipped.
    """
    pieces = _Pieces(stream.chunks())  # type: ignore[attr-defined]
    pax: dict[str, str] = {}
    seen: dict[tuple[str, ...], bool] = {}  # every path so far (and its parents): is it a folder?
    while True:
        header = pieces.take(_BLOCK)
        if header == bytes(_BLOCK):
            if pieces.take(_BLOCK) != bytes(_BLOCK) or not pieces.rest_is_zero():
                raise BackupInvalid("the payload's inner archive has data after its end")
            if pax:
                raise BackupInvalid("the payload's inner archive ends inside a member")
            return
        try:
            member = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise BackupInvalid(f"the payload's inner archive is damaged ({exc})") from None
        if member.type == tarfile.XHDTYPE and not pax:
            if member.size > 1 << 20:
                raise BackupInvalid("the payload's inner archive holds an implausibly large pax header")
            pax = _pax_records(pieces.take(member.size))
            pieces.take(-member.size % _BLOCK)
            continue
        if pax:
            if "path" in pax:
                member.name = pax["path"].rstrip("/") if member.type == tarfile.DIRTYPE else pax["path"]
            if "size" in pax:
                try:
                    member.size = int(pax["size"])
                except ValueError:
                    raise BackupInvalid("the payload's inner archive holds a malformed size") from None
            pax = {}
        if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
            _refuse_kind(member)
        parts = _safe_parts(member.name)
        _check_unique(seen, parts, member)
        data = pieces.pieces(member.size) if member.isreg() else iter(())
        yield member, parts, data
        for _ in data:  # whatever the caller did not read
            pass
        if member.isreg():
            pieces.take(-member.size % _BLOCK)


class _FileWriter:
    """Writes extracted files from a helper thread, syncing as it goes (see ``_Sink``)."""

    def __init__(self) -> None:
        self._unsynced = 0
        self._open: set[int] = set()
        self._worker = _Worker(self._do, "ams-restore-writer")  # type: ignore[arg-type]

    def _do(self, item: tuple[int, memoryview | None]) -> None:
        fd, data = item
        if data is None:
            os.fsync(fd)
            os.close(fd)
            self._open.discard(fd)
            return
        view = data
        while view:
            view = view[os.write(fd, view) :]
        self._unsynced += len(data)
        if self._unsynced >= _SYNC_EVERY:
            end = os.lseek(fd, 0, os.SEEK_CUR)
            _start_writeback(fd, max(0, end - self._unsynced), self._unsynced)
            self._unsynced = 0

    def track(self, fd: int) -> None:
        self._open.add(fd)

    def write(self, fd: int, data: memoryview) -> None:
        self._worker.put((fd, data))  # type: ignore[arg-type]

    def done(self, fd: int) -> None:
        """Sync and close ``fd`` once its writes are through."""
        self._worker.put((fd, None))  # type: ignore[arg-type]

    def close(self) -> None:
        """Wait for the writes; after a failure, close what is still open."""
        try:
            self._worker.close()
        finally:
            for fd in list(self._open):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._open.clear()


def extract_payload(stream: BinaryIO, target: Path, progress: Callable[[int], None] | None = None) -> int:
    """Extract the inner tar into ``target`` (an empty private folder); return the files written.

    Folders are created 0700 and files 0600 with O_EXCL|O_NOFOLLOW, so nothing outside
    ``target`` can be reached, even by a name that repeats. Nothing is taken from a member's
    header but its name, type and size: never its mode, owner or times.
    """
    root = target.resolve()
    files = 0
    writer = _FileWriter()
    try:
        for member, parts, data in iter_payload_members(stream):
            dest = root.joinpath(*parts)
            parent = dest.parent
            parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if root != parent.resolve() and root not in parent.resolve().parents:
                raise BackupUnsafe(
                    f"the backup holds a path leaving its folder ({member.name!r}); it was refused"
                )
            if member.isdir():
                if dest.is_symlink():
                    raise BackupUnsafe(
                        f"the backup path {member.name!r} collides with a link; it was refused"
                    )
                dest.mkdir(mode=0o700, exist_ok=True)
                continue
            try:
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            except FileExistsError:
                raise BackupUnsafe(f"the backup holds {member.name!r} twice; it was refused") from None
            writer.track(fd)
            for piece in data:
                writer.write(fd, piece)
                if progress:
                    progress(len(piece))
            writer.done(fd)
            files += 1
    finally:
        writer.close()
    return files
