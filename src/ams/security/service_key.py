"""The service key and the two wrappings of the master key, without the database layer.

The keyring (:mod:`ams.security.keyring`) reads the wrappings through the ORM; a backup
written by ``ams backup create`` on the embedded database and a restore read them with
:mod:`sqlite3` (:mod:`ams.backup.embedded`, :mod:`ams.backup.staging`). Both open the
service wrapping with :func:`open_service_wrapping`, so there is one rule for it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from ams import crypto
from ams.errors import BadInput, DecryptionFailed, NotWritable
from ams.home import Home, fsync_dir

__all__ = [
    "RECOVERY",
    "SERVICE",
    "STAGED_KEY_PREFIX",
    "ServiceKeySource",
    "decode_service_key",
    "encode_service_key",
    "install_staged_key",
    "open_service_wrapping",
    "wrapping_aad",
]

SERVICE = "service"
RECOVERY = "recovery"


def wrapping_aad(kind: str, instance_id: str) -> bytes:
    return f"ams/master-key/{kind}/v1".encode() + b"\x00" + instance_id.encode()


def encode_service_key(key: bytes) -> bytes:
    return base64.b64encode(key) + b"\n"


def decode_service_key(raw: bytes, where: str) -> bytes:
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise BadInput(f"the service key in {where} is malformed: it must be 32 bytes in base64")
    return key


class ServiceKeySource:
    """Where this machine's service key lives, in order of precedence:

    1. ``AMS_SERVICE_KEY`` (base64), for containers and secret managers;
    2. a systemd credential ``ams-service-key`` (``$CREDENTIALS_DIRECTORY``);
    3. ``$AMS_HOME/keys/service.key`` (0600), the default, written by AMS itself.

    Only the file is written by AMS; the first two are managed by whoever provides them.
    """

    def __init__(self, home: Home, environ: Mapping[str, str] | None = None) -> None:
        self.home = home
        self.environ = os.environ if environ is None else environ

    @property
    def kind(self) -> str:
        if self.environ.get("AMS_SERVICE_KEY"):
            return "environment"
        if self._credential_path() is not None:
            return "credential"
        return "file"

    def _credential_path(self) -> Path | None:
        directory = self.environ.get("CREDENTIALS_DIRECTORY")
        if directory:
            path = Path(directory) / "ams-service-key"
            if path.exists():
                return path
        return None

    @property
    def writable(self) -> bool:
        return self.kind == "file"

    def describe(self) -> str:
        if self.kind == "environment":
            return "AMS_SERVICE_KEY"
        if self.kind == "credential":
            return str(self._credential_path())
        return str(self.home.service_key_file)

    def read(self) -> bytes | None:
        """The key, or None when there is none."""
        if self.kind == "environment":
            return decode_service_key(self.environ["AMS_SERVICE_KEY"].encode(), "AMS_SERVICE_KEY")
        path = self._credential_path() or self.home.service_key_file
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise NotWritable(f"cannot read the service key {path}: {exc.strerror}") from exc
        return decode_service_key(raw, str(path))

    def stage_new(self, folder: Path | None = None) -> tuple[bytes, Callable[[], None], Callable[[], None]]:
        """A new key, with ``commit`` (put it in place) and ``abort`` (forget it).

        The key file is written to a temporary name first, so the database change and the
        rename can be ordered: a crash between them leaves a state that the recovery
        password still unlocks. The temporary file goes into ``folder`` when given (a
        restore's work folder, so that what a crash leaves goes with that folder), else
        beside the key.
        """
        if not self.writable:
            existing = self.read()
            if existing is None:
                raise BadInput(f"the service key from {self.describe()} is missing")
            return existing, (lambda: None), (lambda: None)
        key = crypto.generate_service_key()
        target = self.home.service_key_file
        staging = folder or target.parent
        try:
            staging.mkdir(mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=STAGED_KEY_PREFIX, dir=staging)
        except PermissionError as exc:
            raise NotWritable(f"cannot write the service key in {staging}: permission denied") from exc
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(encode_service_key(key))
            handle.flush()
            os.fsync(handle.fileno())

        def commit() -> None:
            install_staged_key(Path(tmp), target)

        def abort() -> None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

        return key, commit, abort


# The name a staged key file starts with (``.service.key.XXXXXXXX``).
STAGED_KEY_PREFIX = ".service.key."


def install_staged_key(staged: Path, target: Path) -> None:
    """Rename a staged key file onto the key file (one rename), fsyncing both folders."""
    target.parent.mkdir(mode=0o700, exist_ok=True)
    os.replace(staged, target)
    fsync_dir(target.parent)
    if staged.parent != target.parent:
        fsync_dir(staged.parent)


def open_service_wrapping(wrapping: str, service_key: bytes, instance_id: str, fingerprint: str) -> bytes:
    """The master key from its service wrapping (JSON, as stored), checked against the
    instance's fingerprint; :class:`DecryptionFailed` when the key does not open it."""
    wrapped = crypto.WrappedKey.from_json(wrapping)
    master_key = crypto.unwrap_with_key(wrapped, service_key, wrapping_aad(SERVICE, instance_id))
    if crypto.fingerprint(master_key) != fingerprint:
        raise DecryptionFailed("the unwrapped key is not this instance's master key")
    return master_key
