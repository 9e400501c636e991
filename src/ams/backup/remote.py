"""Reading backups where they are offsite: ``s3://`` sources for verify, restore and drills.

An object is staged whole in a private scratch file first (streamed, hashed on the way),
then goes through exactly the checks a local file does (:mod:`ams.backup.verify`,
:mod:`ams.backup.restore`): nothing partial is ever restored. A download cut short is
caught by its length (and by botocore's own length check), an object replaced by someone
else by the SHA-256 its metadata records (when it records one: a copy made with
``aws s3 cp`` keeps it) and in any case by the archive's sums and seal.

Credentials: when the home holds an instance with a target for the bucket, that target's
(sealed or AWS chain); otherwise the standard AWS chain, with ``--endpoint-url`` and
``--region`` for a service other than AWS. A new machine needs nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ams import audit
from ams.backup.s3 import Location, S3Target, failure, make_client, parse_url
from ams.clock import as_utc
from ams.errors import AMSError, NotFound, OffsiteObjectInvalid

if TYPE_CHECKING:
    from ams.backup.restore import RestoreResult
    from ams.backup.staging import PasswordSource
    from ams.home import Home
    from ams.instance import Instance

__all__ = ["Fetched", "drill", "fetch", "is_remote", "receive", "restore_url", "source_for", "verify_url"]

_READ = 1 << 20
_AHEAD = 8  # chunks received ahead of the hashing and writing: 8 MiB at most


def receive(body: Any, handle: BinaryIO, digest: Any) -> int:
    """Copy a download's ``body`` into ``handle`` and ``digest``; the bytes copied.

    A thread receives while this one hashes and writes (the socket's reads, SHA-256 and the
    file's writes all release the GIL), so the hash costs no time of its own, as the
    writes of ``aws s3 cp`` run beside its receiving. A failure on either side stops both
    and is raised here. After a failure here the receiving thread ends as soon as its
    current read returns (at once, unless the server has stalled: then at the client's read
    timeout); it is never left waiting for room in the queue.

    The backup writer's sink (``ams.backup.archive._Sink``) runs the other way round: its
    helper threads write and hash while the caller reads. Here the read is the side that
    can stall, so it is the one moved off the caller's thread: a failed write is raised at
    once, not after a stalled server's read timeout.
    """
    chunks: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=_AHEAD)
    stop = threading.Event()

    def hand_over(item: bytes | BaseException) -> None:
        while not stop.is_set():
            try:
                chunks.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def pull() -> None:
        try:
            while not stop.is_set():
                chunk: bytes = body.read(_READ)
                hand_over(chunk)
                if not chunk:
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the writing side
            hand_over(exc)

    puller = threading.Thread(target=pull, name="ams-fetch", daemon=True)
    puller.start()
    size = 0
    try:
        while True:
            chunk = chunks.get()
            if isinstance(chunk, BaseException):
                raise chunk
            if not chunk:
                return size
            digest.update(chunk)
            handle.write(chunk)
            size += len(chunk)
    finally:
        stop.set()
        puller.join(1.0)


def is_remote(source: str) -> bool:
    return source.startswith("s3://")


@dataclass(frozen=True)
class Fetched:
    path: Path
    url: str
    size: int
    sha256: str
    metadata: dict[str, str]
    seconds: float


def source_for(
    location: Location,
    instance: Instance | None,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
) -> tuple[Any, S3Target]:
    """A client for the object: a matching target's when the instance has one, else the chain."""
    if instance is not None and endpoint_url is None:
        from ams.backup.targets import list_targets, target_client

        with contextlib.suppress(AMSError):
            for target in list_targets(instance):
                if target.location.bucket == location.bucket and location.key.startswith(target.location.key):
                    return target_client(instance, target)
    where = S3Target(f"s3://{location.bucket}", location.bucket, endpoint_url, region, None)
    return make_client(where), where


def fetch(
    url: str,
    folder: Path,
    *,
    instance: Instance | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    client: Any = None,
    where: S3Target | None = None,
) -> Fetched:
    """Download ``url`` whole into ``folder`` (0600), checked against its size and SHA-256."""
    location = parse_url(url)
    if client is None or where is None:
        client, where = source_for(location, instance, endpoint_url=endpoint_url, region=region)
    started = time.monotonic()
    path = folder / (Path(location.key).name or "object.amsbak")
    digest = hashlib.sha256()
    try:
        answer = client.get_object(Bucket=location.bucket, Key=location.key)
        expected = int(answer.get("ContentLength", -1))
        metadata = {str(k).lower(): str(v) for k, v in (answer.get("Metadata") or {}).items()}
        body = answer["Body"]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            size = receive(body, handle, digest)
    except AMSError:
        raise
    except Exception as exc:  # noqa: BLE001 - one line naming the source
        raise failure(exc, where, "get", key=location.key) from None
    from ams.backup.offsite import META_SHA256, META_SIZE

    if expected >= 0 and size != expected:
        raise OffsiteObjectInvalid(
            f"{url}: the download stopped after {size} of {expected} bytes; nothing was restored, try again"
        )
    if metadata.get(META_SIZE) and metadata[META_SIZE] != str(size):
        raise OffsiteObjectInvalid(
            f"{url}: the object holds {size} bytes but was copied with {metadata[META_SIZE]}: it was "
            f"replaced or "
            "cut short; use another copy"
        )
    if metadata.get(META_SHA256) and metadata[META_SHA256] != digest.hexdigest():
        raise OffsiteObjectInvalid(
            f"{url}: the object's SHA-256 differs from the one recorded when it was copied: it was "
            f"altered or "
            "replaced; use another copy"
        )
    return Fetched(path, url, size, digest.hexdigest(), metadata, time.monotonic() - started)


@contextlib.contextmanager
def _scratch(near: Path | None = None) -> Iterator[Path]:
    """A private scratch folder, removed afterwards (beside ``near`` when it exists)."""
    parent = near if near is not None and near.is_dir() and os.access(near, os.W_OK) else None
    folder = Path(tempfile.mkdtemp(prefix=".ams-fetch-", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def verify_url(
    url: str,
    *,
    instance: Instance | None = None,
    actor: str = "ams",
    endpoint_url: str | None = None,
    region: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """``ams backup verify s3://…``: the object staged, then the checks of a local file.

    With an instance, its master key checks the seal, and event 1502 records the result with
    the URL; the catalog's rows describe the local files and stay as they are.
    """
    from ams.backup.verify import verify_backup

    report: dict[str, Any] = {}
    failure_: AMSError | None = None
    backup_id: str | None = None
    try:
        with _scratch() as folder:
            fetched = fetch(url, folder, instance=instance, endpoint_url=endpoint_url, region=region)
            backup_id = fetched.metadata.get("ams-backup-id")
            report = verify_backup(fetched.path, instance=instance, **options)
    except AMSError as exc:
        failure_ = exc
    if instance is not None:
        with instance.transaction() as session:
            audit.record(
                session,
                instance.clock,
                audit.Event.BACKUP_VERIFIED,
                actor=actor,
                target=report.get("backup_id") or backup_id,
                outcome="success" if failure_ is None else "failure",
                details={
                    "file": url,
                    "deep": bool(options.get("deep")),
                    "ok": failure_ is None,
                    "error": failure_.message if failure_ is not None else None,
                },
            )
    if failure_ is not None:
        raise failure_
    report["file"] = url
    report["download"] = {
        "bytes": fetched.size,
        "sha256": fetched.sha256,
        "seconds": round(fetched.seconds, 3),
    }
    report["checks"] = ["download (size, sha256)", *report["checks"]]
    return report


def restore_url(
    url: str,
    home: Home,
    *,
    actor: str,
    password: PasswordSource | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    database_url: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> RestoreResult:
    """``ams backup restore s3://…``: staged whole beside the home, then restored as a file."""
    from ams.backup.restore import restore_backup
    from ams.instance import open_instance

    location = parse_url(url)
    instance: Instance | None = None
    if home.looks_initialised():
        with contextlib.suppress(AMSError, OSError):
            instance = open_instance(home, check_schema=False)
    try:
        client, where = source_for(location, instance, endpoint_url=endpoint_url, region=region)
    finally:
        if instance is not None:
            instance.close()
    near = home.root.parent if home.root.parent.exists() else None
    with _scratch(near) as folder:
        fetched = fetch(url, folder, client=client, where=where)
        return restore_backup(
            fetched.path,
            home,
            actor=actor,
            password=password,
            progress=progress,
            database_url=database_url,
            source=url,
        )


def drill(instance: Instance, name: str, *, actor: str) -> dict[str, Any]:
    """Restore the newest copy of this instance on the target into a scratch home, deep-verify
    it, and say how old it is and how long the restore took (event 1517; recorded on the
    target for ``ams status`` and the console). A failed drill is recorded, then raised."""
    from ams.backup.offsite import read_objects
    from ams.backup.targets import get_target, target_client
    from ams.backup.verify import verify_backup
    from ams.db.models.backups import OffsiteTarget

    target = get_target(instance, name)
    now = instance.clock.now()
    report: dict[str, Any] = {"target": name, "ok": False}
    backup_id: str | None = None
    started = time.monotonic()
    try:
        client, where = target_client(instance, target)
        objects = [
            o
            for o in read_objects(client, where, target.location.key, now=now)
            if o["instance_id"] == instance.id
        ]
        if not objects:
            raise NotFound(
                f"target {name} holds no copy of this instance yet: run a backup (or `ams backup target "
                f"sync {name}`)"
            )
        newest = objects[0]
        backup_id = newest["backup_id"]
        created = as_utc(datetime.fromisoformat(newest["created_at"]))
        report.update(url=newest["url"], backup_id=backup_id, created_at=created.isoformat())
        report["age_hours"] = round((now - created).total_seconds() / 3600, 2)
        with _scratch() as folder:
            fetched = fetch(newest["url"], folder, client=client, where=where)
            report["download_seconds"] = round(fetched.seconds, 3)
            restore_started = time.monotonic()
            checked = verify_backup(fetched.path, instance=instance, deep=True, clock=instance.clock)
            report["restore_seconds"] = round(time.monotonic() - restore_started, 3)
        report["deep"] = checked.get("deep")
        report["ok"] = True
        error, raised = None, None
    except AMSError as exc:
        report["error"] = error = exc.message
        raised = exc
    report["seconds"] = round(time.monotonic() - started, 3)
    with instance.transaction() as session:
        row = session.get(OffsiteTarget, name)
        if row is not None:
            row.last_drill_at, row.last_drill_ok, row.last_drill_error = now, report["ok"], error
        audit.record(
            session,
            instance.clock,
            audit.Event.OFFSITE_DRILL,
            actor=actor,
            target=backup_id,
            outcome="success" if report["ok"] else "failure",
            details={
                k: report.get(k)
                for k in ("target", "url", "age_hours", "seconds", "restore_seconds", "error")
            },
        )
    if raised is not None:
        raise raised
    return report
