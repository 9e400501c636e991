"""The offsite download (the staging of verify, restore and drills from ``s3://``).

Against moto's standalone server on loopback, with the real boto3 client: an object of many
read chunks arrives whole, hashed and private; a failure while writing it stops the thread
that receives and is raised, with nothing left running.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ams.backup import remote
from ams.errors import AMSError
from offsite_support import MotoServer

BUCKET = "ams-download"


@pytest.fixture
def moto_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path)
    server.start()
    try:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        server.stop()


def _fetchers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ams-fetch"]


def test_an_object_of_many_chunks_arrives_whole_checked_and_private(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    data = os.urandom(9 * (1 << 20) + 12345)  # more chunks than are received ahead
    moto_server.client().put_object(Bucket=BUCKET, Key="a/copy.amsbak", Body=data)
    folder = tmp_path / "staged"
    folder.mkdir()
    fetched = remote.fetch(f"s3://{BUCKET}/a/copy.amsbak", folder, endpoint_url=moto_server.endpoint)
    assert fetched.size == len(data)
    assert fetched.sha256 == hashlib.sha256(data).hexdigest()
    assert fetched.path.read_bytes() == data
    assert stat.S_IMODE(fetched.path.stat().st_mode) == 0o600
    assert not _fetchers()


class _DiskFull(io.BytesIO):
    """A file that fills up after two chunks, as a full disk does."""

    def write(self, chunk: bytes) -> int:  # type: ignore[override]
        if self.tell() >= 2 << 20:
            raise OSError(28, "No space left on device")
        return super().write(chunk)


def test_a_write_that_fails_stops_the_receiving_and_is_raised(moto_server: MotoServer) -> None:
    data = os.urandom(20 << 20)  # far more than the chunks received ahead
    client = moto_server.client()
    client.put_object(Bucket=BUCKET, Key="big.amsbak", Body=data)
    body = client.get_object(Bucket=BUCKET, Key="big.amsbak")["Body"]
    with pytest.raises(OSError, match="No space left"):
        remote.receive(body, _DiskFull(), hashlib.sha256())
    assert not _fetchers()  # the receiving thread ended; it did not stay blocked


def test_a_failed_fetch_is_one_line_and_leaves_no_thread(moto_server: MotoServer, tmp_path: Path) -> None:
    folder = tmp_path / "staged"
    folder.mkdir()
    with pytest.raises(AMSError) as caught:
        remote.fetch(f"s3://{BUCKET}/missing.amsbak", folder, endpoint_url=moto_server.endpoint)
    assert "\n" not in str(caught.value)
    assert "missing.amsbak" in str(caught.value)
    assert not _fetchers()


def test_a_write_that_fails_while_the_server_stalls_is_raised_at_once() -> None:
    """The server sends 3 MiB of 20 and then nothing: the writing side's failure is not held
    up by the read that waits for the rest (it would wait for good: no timeout here)."""
    listener = socket.create_server(("127.0.0.1", 0))
    sent, release = threading.Event(), threading.Event()

    def stall() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (20 << 20))
        conn.sendall(os.urandom(3 << 20))
        sent.set()
        release.wait(30)
        conn.close()

    threading.Thread(target=stall, daemon=True).start()
    client = http.client.HTTPConnection(*listener.getsockname())
    try:
        client.request("GET", "/big.amsbak")
        body = client.getresponse()
        started = time.monotonic()
        with pytest.raises(OSError, match="No space left"):
            remote.receive(body, _DiskFull(), hashlib.sha256())
        assert time.monotonic() - started < 10
        assert sent.is_set()
    finally:
        release.set()  # the stalled read ends; the receiving thread, told to stop, ends with it
        listener.close()
    for thread in _fetchers():
        thread.join(10)
    assert not _fetchers()
    client.close()
