"""The snapshot file (``$AMS_HOME/snapshots/<directory id>/<snapshot id>.snap``), format 1.

UTF-8 text, one item a line (docs/formats.md, "Directory snapshots")::

    AMS-DIRECTORY-SNAPSHOT 1
    {"directory_id": ..., "snapshot_id": ..., "taken_at": ..., ...}   header (JSON object)
    "<dn>"<TAB>"<normalised dn>"<TAB>["<object class>", ...]<TAB>{"<attribute>": [...]}   one per entry
    ...
    #END <entries>
    #SHA256 <hex SHA-256 of every byte before this line>

Each entry line is four JSON texts separated by TAB characters (JSON escapes tabs and line
breaks inside strings, so neither occurs raw in a field): the DN and the normalised DN as
JSON strings, the object classes as a JSON array, the attributes as a JSON object whose
binary values are ``{"base64": "..."}``. The database builds these lines itself (the
fields are stored as JSON already), which is what makes a snapshot as fast as slapcat.

The file is written under a temporary name, fsynced, renamed, and its folder fsynced, so a
crash leaves either no file or a whole one. The trailer makes the file check itself; the
database keeps the same digest, so a file swapped for another whole file is refused too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ams.errors import SnapshotCorrupt

__all__ = ["FORMAT_VERSION", "MAGIC", "SnapshotFile", "encode_row", "read_entries", "verify", "write"]

MAGIC = b"AMS-DIRECTORY-SNAPSHOT"
FORMAT_VERSION = 1
Row = tuple[str, str, str, str]  # dn, dn_norm, object classes JSON, attributes JSON


@dataclass(frozen=True)
class SnapshotFile:
    path: Path
    size: int
    sha256: str
    entries: int


def write(path: Path, header: dict[str, Any], chunks: Iterable[tuple[bytes, int]]) -> SnapshotFile:
    """Write the snapshot atomically. ``chunks`` (consumed once, as it streams) are pairs of
    whole entry lines (each ending with a line feed, see :func:`encode_row`) and how many
    lines that is."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    digest = hashlib.sha256()
    count = 0
    size = 0
    try:
        with os.fdopen(fd, "wb") as raw:
            os.fchmod(raw.fileno(), 0o600)

            def put(data: bytes) -> None:
                nonlocal size
                digest.update(data)
                raw.write(data)
                size += len(data)

            put(MAGIC + b" %d\n" % FORMAT_VERSION)
            put(json.dumps(header, sort_keys=True).encode("utf-8") + b"\n")
            for chunk, lines in chunks:
                put(chunk)
                count += lines
            put(b"#END %d\n" % count)
            trailer = b"#SHA256 " + digest.hexdigest().encode("ascii") + b"\n"
            raw.write(trailer)
            size += len(trailer)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return SnapshotFile(path=path, size=size, sha256=digest.hexdigest(), entries=count)


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _string(field: str) -> str:
    """A JSON string field; without escapes it is just what lies between the quotes."""
    if "\\" not in field and len(field) >= 2 and field[0] == '"' and field[-1] == '"':
        return field[1:-1]
    value = json.loads(field)
    if not isinstance(value, str):
        raise ValueError("a DN field is not a JSON string")
    return value


def encode_row(dn: str, dn_norm: str, classes_json: str, attributes_json: str) -> str:
    """One entry line (the portable form; on SQLite the database writes the same text)."""
    return f"{_quote(dn)}\t{_quote(dn_norm)}\t{classes_json}\t{attributes_json}\n"


def _corrupt(path: Path, why: str) -> SnapshotCorrupt:
    return SnapshotCorrupt(
        f"snapshot file {path.name} {why}: it cannot be restored; delete the snapshot and use another one"
    )


def verify(path: Path, expected_sha256: str | None) -> str:
    """Check the trailer digest (and the recorded one); return the digest or raise SnapshotCorrupt."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise _corrupt(path, "is missing") from None
    digest = hashlib.sha256()
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size < 80:
            raise _corrupt(path, "is truncated")
        # The trailer is the last line: "#SHA256 " + 64 hex + "\n" = 73 bytes.
        body_len = size - 73
        remaining = body_len
        while remaining > 0:
            chunk = handle.read(min(remaining, 1 << 20))
            if not chunk:
                raise _corrupt(path, "is truncated")
            digest.update(chunk)
            remaining -= len(chunk)
        trailer = handle.read()
    if not trailer.startswith(b"#SHA256 ") or not trailer.endswith(b"\n"):
        raise _corrupt(path, "has no checksum trailer (truncated?)")
    recorded = trailer[8:-1].decode("ascii", "replace")
    actual = digest.hexdigest()
    if recorded != actual:
        raise _corrupt(path, "fails its checksum")
    if expected_sha256 is not None and expected_sha256 != actual:
        raise _corrupt(path, "is not the file this snapshot wrote (its checksum differs)")
    return actual


def read_entries(path: Path) -> tuple[dict[str, Any], Iterator[Row]]:
    """The header and an iterator over the entries. Call :func:`verify` first: this only
    checks the structure."""
    handle = open(path, "rb")  # noqa: SIM115 - closed by the generator
    first = handle.readline()
    if not first.startswith(MAGIC + b" "):
        handle.close()
        raise _corrupt(path, "is not an AMS directory snapshot")
    try:
        version = int(first[len(MAGIC) + 1 :].strip())
    except ValueError:
        handle.close()
        raise _corrupt(path, "has an unreadable format line") from None
    if version != FORMAT_VERSION:
        handle.close()
        raise SnapshotCorrupt(
            f"snapshot file {path.name} has format {version}, which this AMS cannot read "
            f"(it reads {FORMAT_VERSION}): use a newer AMS"
        )
    header = json.loads(handle.readline())

    def entries() -> Iterator[Row]:
        with handle:
            for raw in handle:
                if raw.startswith(b"#END "):
                    return
                fields = raw.decode("utf-8").rstrip("\n").split("\t")
                if len(fields) != 4:
                    raise _corrupt(path, "has an entry line that is not four tab-separated fields")
                dn, dn_norm, classes, attrs = fields
                yield _string(dn), _string(dn_norm), classes, attrs
            raise _corrupt(path, "ends before its #END line")

    return header, entries()
