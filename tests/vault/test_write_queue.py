"""The hot path's writers queue on run/write.lock (ams.vault.hotsql.writing), not in
SQLite's busy handler, which sleeps between retries while the worker's event loop waits."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import stat
import threading
import time

from ams.crypto import certs
from ams.crypto.blob import encrypt_password
from ams.instance import Instance
from ams.vault import devices, passwords, regkeys
from vault_support import _small_keys  # noqa: F401 - RSA-2048 here


def _blob(pem: str, version: int) -> str:
    plaintext = json.dumps({"account": "Administrator", "password": f"pw-{version}", "version": version})
    return base64.b64encode(encrypt_password(certs.certificate_from_pem(pem), plaintext.encode())).decode()


def test_a_report_waits_for_the_write_lock_and_goes_on_the_moment_it_is_released(instance: Instance) -> None:
    token = devices.register(instance, regkeys.create(instance, "k", "test").key, "pc-1").token
    advice = passwords.check_in(instance, token, None)
    blob = _blob(advice.certificate_pem, advice.next_version)
    lock = instance.home.run_dir / "write.lock"
    done: list[float] = []
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another worker's write in progress
        reporter = threading.Thread(
            target=lambda: (
                passwords.report(instance, token, "Administrator", advice.next_version, blob),
                done.append(time.monotonic()),
            )
        )
        reporter.start()
        time.sleep(0.5)
        assert not done, "the report wrote while another writer held the lock"
        released = time.monotonic()
        fcntl.flock(fd, fcntl.LOCK_UN)
        reporter.join(timeout=10)
    finally:
        os.close(fd)
    assert done and done[0] - released < 2  # woken when released (no retry loop to wait out)
    assert passwords.check_in(instance, token, advice.next_version).current_version == advice.next_version
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
