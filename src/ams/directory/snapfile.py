"""The snapshot file (``$AMS_HOME/snapshots/<directory id>/<snapshot id>.snap``), format 2.

UTF-8 text (docs/formats.md, "Directory snapshots")::

    AMS-DIRECTORY-SNAPSHOT 2
    {"directory_id": ..., "snapshot_id": ..., "taken_at": ..., ...}   header (JSON object)
    #BLOCK <n> <bytes>                  then <bytes> bytes holding n entries, column by column:
    ["<dn>", ...]                       the n DNs, one JSON array
    ["<normalised dn>", ...]            the n normalised DNs, one JSON array
    ["<object class>", ...]             n lines: each entry's object classes (JSON)
    {"<attribute>": [...]}              n lines: each entry's attributes (JSON)
    #BLOCK ...                          (more blocks)
    #END <entries>
    #SHA256 <hex SHA-256 of every byte before this line>

Column by column is what makes a snapshot cheap at both ends: the database builds each
column of a block with one aggregate (the object classes and attributes are stored as JSON
already, so they go out as they are), and a restore turns a block back into rows with two
``json.loads`` and two ``split`` calls, with no work per entry. Format 1 (one line per
entry, four TAB-separated JSON texts) is still read.

The file is written under a temporary name, fsynced, renamed, and its folder fsynced, so a
crash leaves either no file or a whole one. The trailer makes the file check itself; the
database keeps the same digest, so a file swapped for another whole file is refused too.
The file's modification time is set to the moment the snapshot completed, which the
database records as well: a file whose size and time still match has not been written
since, so listing snapshots need not read every file (see :func:`unchanged`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from ams.errors import SnapshotCorrupt

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "Block",
    "Blocks",
    "Columns",
    "Row",
    "SnapshotFile",
    "encode_block",
    "read_blocks",
    "read_entries",
    "stamp",
    "unchanged",
    "verify",
    "write",
]

MAGIC = b"AMS-DIRECTORY-SNAPSHOT"
FORMAT_VERSION = 2
_READABLE = (1, 2)
Row = tuple[str, str, str, str]  # dn, dn_norm, object classes JSON, attributes JSON
# The same for many entries, column by column: dns, dn_norms, object classes, attributes.
Columns = tuple[list[str], list[str], list[str], list[str]]
_TRAILER_LEN = 73  # "#SHA256 " + 64 hex digits + "\n"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LEGACY_BATCH = 5000
_ADVISE = hasattr(os, "posix_fadvise")


@dataclass(frozen=True, slots=True)
class Block:
    """n entries, column by column, as they go into the file (UTF-8, no line feeds inside)."""

    entries: int
    dns: bytes  # a JSON array of the n DNs
    dn_norms: bytes  # a JSON array of the n normalised DNs
    object_classes: bytes  # n JSON arrays, one a line, without a final line feed
    attributes: bytes  # n JSON objects, one a line, without a final line feed


@dataclass(frozen=True)
class SnapshotFile:
    path: Path
    size: int
    sha256: str
    entries: int
    completed: datetime  # also the file's modification time


def encode_block(rows: Sequence[Row]) -> Block:
    """A block from rows (the portable form; on SQLite the database builds the same bytes)."""
    dns, norms, classes, attributes = zip(*rows, strict=True) if rows else ((), (), (), ())
    return Block(
        entries=len(rows),
        dns=json.dumps(list(dns), ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
        dn_norms=json.dumps(list(norms), ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
        object_classes="\n".join(classes).encode("utf-8"),
        attributes="\n".join(attributes).encode("utf-8"),
    )


def _ns(when: datetime) -> int:
    """A time as integer nanoseconds since the epoch, exactly (the database keeps microseconds)."""
    return (when - _EPOCH) // timedelta(microseconds=1) * 1000


def _write_all(fd: int, parts: list[bytes]) -> int:
    total = sum(len(p) for p in parts)
    done = os.writev(fd, parts)
    if done < total:  # a short write (a signal, a full disk): finish it, or raise
        rest = memoryview(b"".join(parts))[done:]
        while rest:
            rest = rest[os.write(fd, rest) :]
    return total


def write(
    path: Path, header: dict[str, Any], blocks: Iterable[Block], *, now: Callable[[], datetime]
) -> SnapshotFile:
    """Write the snapshot atomically, ``blocks`` consumed once as they stream. The file's
    modification time becomes ``now()`` once the last byte is written: the caller records
    it (``SnapshotFile.completed``) with the digest."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    digest = hashlib.sha256()
    count = 0
    size = 0

    def put(*parts: bytes) -> None:
        nonlocal size
        for part in parts:  # hashing releases the GIL: the database reads the next block meanwhile
            digest.update(part)
        start = size
        size += _write_all(fd, list(parts))
        if _ADVISE:
            # Nobody reads a snapshot soon: say so, which also starts writing these pages
            # out now (they stay cached while they are written), so the fsync at the end
            # has little left to wait for instead of the whole file.
            os.posix_fadvise(fd, start, size - start, os.POSIX_FADV_DONTNEED)

    try:
        os.fchmod(fd, 0o600)
        put(MAGIC + b" %d\n" % FORMAT_VERSION, json.dumps(header, sort_keys=True).encode("utf-8") + b"\n")
        for block in blocks:
            if block.entries == 0:
                continue
            body = len(block.dns) + len(block.dn_norms) + len(block.object_classes)
            body += len(block.attributes) + 4
            put(
                b"#BLOCK %d %d\n" % (block.entries, body),
                block.dns,
                b"\n",
                block.dn_norms,
                b"\n",
                block.object_classes,
                b"\n",
                block.attributes,
                b"\n",
            )
            count += block.entries
        put(b"#END %d\n" % count)
        sha256 = digest.hexdigest()
        size += _write_all(fd, [b"#SHA256 " + sha256.encode("ascii") + b"\n"])
        completed = now()
        os.utime(fd, ns=(_ns(completed), _ns(completed)))
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return SnapshotFile(path=path, size=size, sha256=sha256, entries=count, completed=completed)


def unchanged(path: Path, size: int | None, completed: datetime | None) -> bool:
    """Has the file kept the size and the modification time it was written with?

    A quick check, as rsync's: any write to the file moves its time, so a file that passes
    was not written since it was made (or since :func:`verify` last passed and
    :func:`stamp` set the time back). Only :func:`verify` proves the content.
    """
    if size is None or completed is None:
        return False
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_size == size and st.st_mtime_ns == _ns(completed)


def stamp(path: Path, completed: datetime) -> None:
    """Set the file's time back to ``completed`` after :func:`verify` passed (a copy, say,
    that kept the bytes but not the time), so the quick check holds again."""
    with contextlib.suppress(OSError):
        os.utime(path, ns=(_ns(completed), _ns(completed)))


def _corrupt(path: Path, why: str) -> SnapshotCorrupt:
    return SnapshotCorrupt(
        f"snapshot file {path.name} {why}: it cannot be restored; delete the snapshot and use another one"
    )


def _check(path: Path, actual: str, trailer: bytes, expected_sha256: str | None) -> str:
    if not trailer.startswith(b"#SHA256 ") or not trailer.endswith(b"\n") or len(trailer) != _TRAILER_LEN:
        raise _corrupt(path, "has no checksum trailer (truncated?)")
    if trailer[8:-1].decode("ascii", "replace") != actual:
        raise _corrupt(path, "fails its checksum")
    if expected_sha256 is not None and expected_sha256 != actual:
        raise _corrupt(path, "is not the file this snapshot wrote (its checksum differs)")
    return actual


def verify(path: Path, expected_sha256: str | None) -> str:
    """Check the trailer digest (and the recorded one); return the digest or raise SnapshotCorrupt."""
    try:
        handle = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise _corrupt(path, "is missing") from None
    digest = hashlib.sha256()
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size < 80:
            raise _corrupt(path, "is truncated")
        remaining = size - _TRAILER_LEN
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        while remaining > 0:
            got = handle.readinto(view[: min(remaining, len(buffer))])
            if not got:
                raise _corrupt(path, "is truncated")
            digest.update(view[:got])
            remaining -= got
        trailer = handle.read()
    return _check(path, digest.hexdigest(), trailer, expected_sha256)


def _string(field: str) -> str:
    """A format-1 JSON string field; without escapes it is just what lies between the quotes."""
    if "\\" not in field and len(field) >= 2 and field[0] == '"' and field[-1] == '"':
        return field[1:-1]
    value = json.loads(field)
    if not isinstance(value, str):
        raise ValueError("a DN field is not a JSON string")
    return value


def _strings(raw: str) -> list[str]:
    value = json.loads(raw)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("a DN column is not a JSON array of strings")
    return value


def read_blocks(path: Path, expected_sha256: str | None) -> tuple[dict[str, Any], Blocks]:
    """The header and an iterator over the entries, a block at a time, column by column.

    The file is checked as it is read, in the one pass: after the last block the iterator
    checks the digest (as :func:`verify` does) and raises SnapshotCorrupt instead of
    ending when it fails. So the rows are proven only once the iterator has ended: use
    them for nothing that cannot be undone before then (a restore stages them in a
    generation that goes live only after). A damaged file can also fail earlier, when its
    bytes do not parse: that is SnapshotCorrupt too, naming what could not be read.
    """
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the generator
    except FileNotFoundError:
        raise _corrupt(path, "is missing") from None
    digest = hashlib.sha256()

    def line() -> bytes:
        data = handle.readline()
        digest.update(data)
        return data

    try:
        first = line()
        if not first.startswith(MAGIC + b" "):
            raise _corrupt(path, "is not an AMS directory snapshot")
        try:
            version = int(first[len(MAGIC) + 1 :].strip())
        except ValueError:
            raise _corrupt(path, "has an unreadable format line") from None
        if version not in _READABLE:
            raise SnapshotCorrupt(
                f"snapshot file {path.name} has format {version}, which this AMS cannot read "
                f"(it reads {', '.join(map(str, _READABLE))}): use a newer AMS"
            )
        try:
            header = json.loads(line())
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep
            raise _corrupt(path, "has an unreadable header") from None
        if not isinstance(header, dict):
            raise _corrupt(path, "has an unreadable header")
    except BaseException:
        handle.close()
        raise

    def end(data: bytes, count: int) -> None:
        """The #END line is read (and hashed): check the count and the trailer."""
        if data != b"#END %d\n" % count:
            raise _corrupt(
                path, f"says it holds {data[5:].strip().decode('ascii', 'replace')} entries, not {count}"
            )
        _check(path, digest.hexdigest(), handle.read(), expected_sha256)

    def blocks() -> Generator[Columns, None, None]:
        count = 0
        with handle:
            while data := line():
                if data.startswith(b"#END "):
                    end(data, count)
                    return
                words = data.split()
                if len(words) != 3 or words[0] != b"#BLOCK":
                    raise _corrupt(path, "has a block that does not start with #BLOCK")
                try:
                    n, length = int(words[1]), int(words[2])
                except ValueError:
                    raise _corrupt(path, "has an unreadable #BLOCK line") from None
                body = handle.read(length)
                digest.update(body)  # releases the GIL
                if len(body) != length or not body.endswith(b"\n"):
                    raise _corrupt(path, "ends inside a block")
                parts = body[:-1].decode("utf-8").split("\n")
                if len(parts) != 2 + 2 * n:
                    raise _corrupt(path, "has a block whose size does not match its count")
                dns, norms = _strings(parts[0]), _strings(parts[1])
                if len(dns) != n or len(norms) != n:
                    raise _corrupt(path, "has a block whose DN columns do not match its count")
                count += n
                yield dns, norms, parts[2 : 2 + n], parts[2 + n :]
            raise _corrupt(path, "ends before its #END line")

    def legacy_blocks() -> Generator[Columns, None, None]:
        count = 0
        batch: Columns = ([], [], [], [])
        with handle:
            while data := line():
                if data.startswith(b"#END "):
                    end(data, count)
                    if count % _LEGACY_BATCH:
                        yield batch
                    return
                fields = data.decode("utf-8").rstrip("\n").split("\t")
                if len(fields) != 4:
                    raise _corrupt(path, "has an entry line that is not four tab-separated fields")
                dn, dn_norm, classes, attrs = fields
                batch[0].append(_string(dn))
                batch[1].append(_string(dn_norm))
                batch[2].append(classes)
                batch[3].append(attrs)
                count += 1
                if count % _LEGACY_BATCH == 0:
                    yield batch
                    batch = ([], [], [], [])
            raise _corrupt(path, "ends before its #END line")

    return header, Blocks(path, handle, blocks() if version == 2 else legacy_blocks())


class Blocks(Iterator[Columns]):
    """The blocks of a snapshot file being read (:func:`read_blocks`). Bytes that do not parse
    (not UTF-8, not JSON, nested too deep) are SnapshotCorrupt; :meth:`close` closes the file
    also when no block was read (a caller that gives up after the header)."""

    def __init__(self, path: Path, handle: IO[bytes], blocks: Generator[Columns, None, None]) -> None:
        self._path = path
        self._handle = handle
        self._blocks = blocks

    def __next__(self) -> Columns:
        try:
            return next(self._blocks)
        except (ValueError, RecursionError):
            self.close()
            raise _corrupt(self._path, "has an entry that cannot be read") from None

    def close(self) -> None:
        self._blocks.close()
        self._handle.close()


def read_entries(path: Path, expected_sha256: str | None = None) -> tuple[dict[str, Any], Iterator[Row]]:
    """The header and an iterator over the entries, one row at a time (see :func:`read_blocks`)."""
    header, blocks = read_blocks(path, expected_sha256)

    def entries() -> Iterator[Row]:
        for dns, norms, classes, attributes in blocks:
            yield from zip(dns, norms, classes, attributes, strict=True)

    return header, entries()
