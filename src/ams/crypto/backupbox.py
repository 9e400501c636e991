"""The backup payload stream and the archive seal (docs/formats.md, "Backup archive").

The payload is encrypted as a sequence of AES-256-GCM chunks, so a backup of any size is
written and read with constant memory. Each chunk's nonce and associated data bind its
index and whether it is the last one: reordering, dropping, duplicating or truncating
chunks fails authentication. The key is derived from the master key with HKDF and a random
per-archive salt, so nonces (the chunk index) never repeat under one key.

Layout of the stream::

    header  = b"AMSE" | version u8 = 1 | chunk size u32 BE | salt 16 bytes      (25 bytes)
    chunk_i = AES-256-GCM(key, nonce_i, plaintext_i, aad = header | i u64 BE | final u8)
    nonce_i = i u64 BE | 0x000000 | final u8                                     (12 bytes)

Every chunk but the last holds exactly ``chunk size`` plaintext bytes; the last holds fewer
(possibly none) and has ``final = 1``. A reader that meets the end of the data before a
final chunk reports truncation.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Iterator
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ams.errors import DecryptionFailed

__all__ = [
    "PAYLOAD_CHUNK_BYTES",
    "PayloadReader",
    "PayloadWriter",
    "seal_sums",
    "verify_sums_seal",
]

_MAGIC = b"AMSE"
_VERSION = 1
_HEADER = struct.Struct(">4sBI16s")
_TAG = 16
PAYLOAD_CHUNK_BYTES = 1 << 20
_SEAL_INFO = b"ams/derived/v1/backup-seal"
_PAYLOAD_INFO = b"ams/derived/v1/backup-payload"


def _payload_key(master_key: bytes, salt: bytes) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_PAYLOAD_INFO).derive(master_key)
    return AESGCM(key)


def _seal_key(master_key: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SEAL_INFO).derive(master_key)


def _nonce_aad(header: bytes, index: int, final: bool) -> tuple[bytes, bytes]:
    flag = b"\x01" if final else b"\x00"
    position = struct.pack(">Q", index)
    return position + b"\x00\x00\x00" + flag, header + position + flag


class PayloadWriter:
    """A write-only file object: plaintext in, encrypted chunks out to ``sink``."""

    def __init__(
        self,
        sink: BinaryIO,
        master_key: bytes,
        chunk_bytes: int = PAYLOAD_CHUNK_BYTES,
        salt: bytes | None = None,
    ) -> None:
        if not 4096 <= chunk_bytes <= 64 << 20:
            raise ValueError("chunk size out of range")
        salt = os.urandom(16) if salt is None else salt
        if len(salt) != 16:
            raise ValueError("the payload salt is 16 bytes")
        self._sink = sink
        self._chunk = chunk_bytes
        self._header = _HEADER.pack(_MAGIC, _VERSION, chunk_bytes, salt)
        self._aead = _payload_key(master_key, self._header[-16:])
        self._buffer = bytearray()
        self._index = 0
        self._closed = False
        sink.write(self._header)

    def writable(self) -> bool:
        return True

    def _emit(self, data: bytes | bytearray | memoryview, final: bool) -> None:
        nonce, aad = _nonce_aad(self._header, self._index, final)
        self._sink.write(self._aead.encrypt(nonce, data, aad))
        self._index += 1

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Buffer at most one chunk; whole chunks of ``data`` are encrypted in place."""
        if self._closed:
            raise ValueError("write to a closed payload")
        view = memoryview(data).cast("B")
        size = len(view)
        # A full buffered chunk is emitted only once more data follows: it may be the last.
        if self._buffer and len(self._buffer) + size > self._chunk:
            need = self._chunk - len(self._buffer)
            self._buffer += view[:need]
            view = view[need:]
            self._emit(self._buffer, False)
            self._buffer = bytearray()
        while len(view) > self._chunk:
            self._emit(view[: self._chunk], False)
            view = view[self._chunk :]
        self._buffer += view
        return size

    def close(self) -> None:
        """Write the final chunk (always shorter than a full chunk)."""
        if self._closed:
            return
        if len(self._buffer) == self._chunk:
            self._emit(bytes(self._buffer), False)
            self._buffer.clear()
        self._emit(bytes(self._buffer), True)
        self._buffer.clear()
        self._closed = True


class PayloadReader:
    """Decrypt a payload stream chunk by chunk; :meth:`read` makes it a file object."""

    def __init__(self, source: BinaryIO, master_key: bytes) -> None:
        header = source.read(_HEADER.size)
        if len(header) != _HEADER.size:
            raise DecryptionFailed("the payload is truncated: its header is incomplete")
        magic, version, chunk, salt = _HEADER.unpack(header)
        if magic != _MAGIC:
            raise DecryptionFailed("the payload does not start with the AMSE magic")
        if version != _VERSION:
            raise DecryptionFailed(f"the payload has unknown version {version}: a newer AMS wrote it")
        if not 4096 <= chunk <= 64 << 20:
            raise DecryptionFailed("the payload header names an impossible chunk size")
        self._source = source
        self._header = header
        self.salt = salt
        self._chunk = chunk
        self._aead = _payload_key(master_key, salt)
        self._chunks = self._decrypt_all()
        self._pending = b""
        self._done = False

    def _decrypt_all(self) -> Iterator[bytes]:
        full = self._chunk + _TAG
        index = 0
        current = self._source.read(full)
        while True:
            if len(current) < _TAG:
                raise DecryptionFailed(
                    f"the payload is truncated: chunk {index} is missing or incomplete and no final "
                    "chunk was found"
                )
            nxt = self._source.read(full) if len(current) == full else b""
            final = len(current) < full
            nonce, aad = _nonce_aad(self._header, index, final)
            try:
                plain = self._aead.decrypt(nonce, current, aad)
            except InvalidTag:
                raise DecryptionFailed(
                    f"payload chunk {index} does not authenticate (altered, reordered or truncated)"
                ) from None
            yield plain
            if final:
                if self._source.read(1):
                    raise DecryptionFailed("the payload has data after its final chunk")
                return
            index += 1
            current = nxt

    def chunks(self) -> Iterator[bytes]:
        yield from self._chunks

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        out = bytearray(self._pending)
        self._pending = b""
        while (size < 0 or len(out) < size) and not self._done:
            try:
                out += next(self._chunks)
            except StopIteration:
                self._done = True
        if size >= 0 and len(out) > size:
            self._pending = bytes(out[size:])
            del out[size:]
        return bytes(out)


def seal_sums(master_key: bytes, sums: bytes) -> str:
    """HMAC-SHA256 of the SHA256SUMS bytes under a key derived from the master key, hex."""
    return hmac.new(_seal_key(master_key), sums, hashlib.sha256).hexdigest()


def verify_sums_seal(master_key: bytes, sums: bytes, seal_hex: str) -> bool:
    return hmac.compare_digest(seal_sums(master_key, sums), seal_hex.strip().lower())
