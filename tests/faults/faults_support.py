"""Shared by the corruption, hostile-archive and fuzzing tests (no tests in here).

- ``SEED``: every random choice in these tests derives from it (``AMS_FAULT_SEED``).
- ``LONG``: ``AMS_FAULT_LONG=1`` runs the long versions (many more flips and truncation
  points); CI runs the bounded ones.
- :func:`record` writes what a test tried and what happened through figures.record (one
  JSON line in ``$AMS_FAULT_FIGURES/<area>.jsonl``; docs/reliability.md's table).
- :func:`reseal` writes a correctly sealed ``.amsbak`` around any inner payload bytes, with
  the master key, so hostile content reaches the parsers behind the seal.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from ams.backup.archive import MANIFEST, ArchiveReader, ArchiveWriter, archive_mtime

SEED = int(os.environ.get("AMS_FAULT_SEED", "20261204"))
LONG = os.environ.get("AMS_FAULT_LONG", "").lower() not in ("", "0", "false", "no")


def scale(ci: int, long: int) -> int:
    """How many cases to try: ``ci`` in the bounded runs, ``long`` with AMS_FAULT_LONG=1."""
    return long if LONG else ci


def record(area: str, what: str, tried: int, outcome: str, seed: int | str | None = SEED) -> None:
    """One figure through tests/faults/figures.py (docs/reliability.md's table); ``seed``
    None: Hypothesis's derandomized search (the ``ci`` profile) rather than ``SEED``."""
    from figures import record as shared

    shared(area, what, tried, outcome, "hypothesis (derandomized)" if seed is None else seed)


RUN: dict[str, int] = {}


def count(name: str) -> None:
    """One more example of the fuzz target ``name`` ran (figures record what ran)."""
    RUN[name] = RUN.get(name, 0) + 1


def inner_payload(archive: Path, master_key: bytes) -> bytes:
    """The decrypted inner tar of an archive (small archives only: it is read into memory)."""
    with ArchiveReader(archive) as reader:
        stream = reader.payload(master_key)
        data = stream.read()
        stream.finish()
    return data


def reseal(
    source: Path,
    master_key: bytes,
    target: Path,
    *,
    inner: bytes | None = None,
    produce: Callable[[BinaryIO], None] | None = None,
    manifest: Callable[[dict[str, Any]], None] | None = None,
    payload: Callable[[bytes], bytes] | None = None,
) -> Path:
    """Write ``target``: ``source``'s manifest (edited by ``manifest``) and a payload of
    ``inner`` (or what ``produce`` writes), summed and sealed with ``master_key`` as AMS
    seals. ``payload`` may change the encrypted payload bytes before they are summed and
    sealed (chunks swapped, a chunk from elsewhere): what an attacker holding the seal key
    but not the payload key could write."""
    with ArchiveReader(source) as reader:
        data = dict(reader.manifest.data)
        created_at = reader.manifest.created_at
    salt = secrets.token_bytes(16)
    data["payload"] = {**data.get("payload", {}), "salt": salt.hex()}
    if manifest is not None:
        manifest(data)

    def write_inner(sink: BinaryIO) -> None:
        if produce is not None:
            produce(sink)
        else:
            sink.write(inner or b"")

    with open(target, "w+b") as handle:
        os.fchmod(handle.fileno(), 0o600)
        writer = ArchiveWriter(handle, archive_mtime(created_at))
        writer.add_bytes(MANIFEST, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))
        if payload is None:
            writer.write_payload(master_key, write_inner, salt)
        else:
            plain = io.BytesIO()
            from ams import crypto

            box = crypto.PayloadWriter(plain, master_key, salt=salt)
            write_inner(box)  # type: ignore[arg-type]
            box.close()
            writer.add_bytes("payload.enc", payload(plain.getvalue()))
        writer.finish(master_key, data["master_key_fingerprint"])
    return target


def tar_member(
    name: str,
    data: bytes = b"",
    *,
    type: bytes = tarfile.REGTYPE,
    size: int | None = None,
    linkname: str = "",
    fmt: int = tarfile.PAX_FORMAT,
    pax: dict[str, str] | None = None,
) -> bytes:
    """One inner-tar member (header and padded data), ``size`` declared as given."""
    info = tarfile.TarInfo(name)
    info.type = type
    info.size = len(data) if size is None else size
    info.linkname = linkname
    info.mode = 0o600
    if pax:
        info.pax_headers = pax
    body = data + b"\0" * (-len(data) % 512)
    return info.tobuf(fmt, "utf-8", "surrogateescape") + body


def tar_end() -> bytes:
    return b"\0" * 1024
