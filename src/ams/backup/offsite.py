"""Offsite copies: every verified backup also copied to each target (ams.backup.targets).

A copy (:func:`copy_backup`) reads the archive once for its SHA-256 (in a thread, while the
client is made), uploads it (one PUT up to :data:`PART_SIZE`, a multipart upload above,
parts in a few threads, each hashed once, its SHA-256 checked by the service), with the
SHA-256 and the backup's identity as object metadata and the Object Lock retention the
target asks for, then checks what the service holds: the size, the metadata, and the
service's SHA-256 checksum, else (one PUT) the ETag, else the object read back whole. An
interrupted multipart upload is aborted; what a crash left is aborted by the next run
(:func:`abort_incomplete`). A failure is recorded (the ``offsite_copies`` row, event 1514)
and never touches the local backup or its catalog row; :func:`copy_pending` retries what is
missing. A target's own retention (:func:`prune_target`) never deletes a copy still under
its lock.

Object keys, metadata and the lock are described in docs/formats.md ("Offsite copies").
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ams import audit
from ams.backup.s3 import S3Target, failure
from ams.backup.targets import Target, check_lock, get_target, list_targets, target_client
from ams.clock import as_utc
from ams.errors import AMSError, OffsiteCopyFailed, OffsiteLockUnavailable, OffsiteObjectInvalid

if TYPE_CHECKING:
    from ams.instance import Instance

__all__ = [
    "CopyOutcome",
    "abort_incomplete",
    "copy_backup",
    "copy_new_backup",
    "copy_pending",
    "list_objects",
    "offsite_status",
    "prune_target",
    "read_objects",
]

log = logging.getLogger("ams.backup")

PART_SIZE = 8 << 20  # one PUT up to this; the smallest part of a multipart upload
_MAX_PARTS = 9000  # S3 allows 10,000 parts: larger archives get larger parts
_THREADS = 4
_READ = 1 << 20
KEY_NAME = re.compile(r"^ams-\d{8}T\d{6}Z-(manual|scheduled|pre-restore)-[0-9a-f]{16}\.amsbak$")
# Object metadata (x-amz-meta-*), lower case as S3 returns it.
META_SHA256 = "ams-sha256"
META_BACKUP = "ams-backup-id"
META_INSTANCE = "ams-instance-id"
META_CREATED = "ams-created-at"
META_KIND = "ams-kind"
META_SIZE = "ams-size"
META_HOME = "ams-home-id"

_uploading: set[tuple[str, str]] = set()  # (bucket, key) this process is uploading now
_uploading_lock = threading.Lock()


# -- copies -----------------------------------------------------------------------------------


@dataclass
class CopyOutcome:
    target: str
    backup_id: str
    ok: bool
    key: str
    error: str | None = None
    size_bytes: int | None = None
    seconds: float | None = None
    lock_until: datetime | None = None
    checked_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "backup_id": self.backup_id,
            "ok": self.ok,
            "key": self.key,
            "error": self.error,
            "size_bytes": self.size_bytes,
            "seconds": round(self.seconds, 3) if self.seconds is not None else None,
            "lock_until": self.lock_until.isoformat() if self.lock_until else None,
            "checked_by": self.checked_by,
        }


@dataclass(frozen=True)
class _Local:
    """A local archive to copy: its catalog facts."""

    backup_id: str
    path: Path
    kind: str
    created_at: datetime
    instance_id: str
    home_id: str | None


def _sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_READ):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


@contextlib.contextmanager
def _claim(bucket: str, key: str) -> Iterator[None]:
    with _uploading_lock:
        _uploading.add((bucket, key))
    try:
        yield
    finally:
        with _uploading_lock:
            _uploading.discard((bucket, key))


@dataclass
class _Sent:
    version_id: str | None
    etag: str | None  # the service's ETag for these bytes: their MD5 (one PUT); None for parts
    checksum: str  # base64 SHA-256 (whole, or of the parts' SHA-256s for a multipart upload)


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _read_part(fd: int, offset: int, length: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise OffsiteCopyFailed(
            "the local backup changed size while it was being copied; the next run retries"
        )
    return data


def _upload(client: Any, bucket: str, key: str, path: Path, size: int, extra: dict[str, Any]) -> _Sent:
    """PUT, or a multipart upload aborted on any failure; each part with its SHA-256."""
    with open(path, "rb") as handle:
        fd = handle.fileno()
        if size <= PART_SIZE:
            data = _read_part(fd, 0, size)
            checksum = _b64(hashlib.sha256(data).digest())
            md5 = hashlib.md5(data, usedforsecurity=False).digest()
            # Content-MD5 as well: what services without the newer checksums (and Object Lock
            # on them) ask for.
            answer = client.put_object(
                Bucket=bucket,
                Key=key,
                Body=data,
                ContentMD5=_b64(md5),
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=checksum,
                **extra,
            )
            return _Sent(answer.get("VersionId"), md5.hex(), checksum)
        upload_id = client.create_multipart_upload(
            Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256", **extra
        )["UploadId"]
        smallest = -(-size // _MAX_PARTS)  # rounded up, then to whole MiB
        part = max(PART_SIZE, -(-smallest // (1 << 20)) * (1 << 20))
        count = (size + part - 1) // part

        def send(number: int) -> tuple[int, str, bytes]:
            offset = (number - 1) * part
            data = _read_part(fd, offset, min(part, size - offset))
            # hashlib releases the GIL on a buffer this large: the threads hash in parallel.
            sha = hashlib.sha256(data).digest()
            answer = client.upload_part(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=_b64(sha),
            )
            return number, str(answer["ETag"]), sha

        try:
            with concurrent.futures.ThreadPoolExecutor(_THREADS, thread_name_prefix="ams-offsite") as pool:
                # At most _THREADS parts in memory: submitted as earlier ones finish.
                results: list[tuple[int, str, bytes]] = []
                pending: set[concurrent.futures.Future[tuple[int, str, bytes]]] = set()
                for number in range(1, count + 1):
                    pending.add(pool.submit(send, number))
                    if len(pending) >= _THREADS:
                        done, pending = concurrent.futures.wait(
                            pending, return_when=concurrent.futures.FIRST_COMPLETED
                        )
                        results += [f.result() for f in done]
                results += [f.result() for f in pending]
            results.sort()
            answer = client.complete_multipart_upload(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [
                        {"ETag": etag, "PartNumber": n, "ChecksumSHA256": _b64(sha)}
                        for n, etag, sha in results
                    ]
                },
            )
        except BaseException:
            with contextlib.suppress(Exception):
                client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise
        checksum = _b64(hashlib.sha256(b"".join(r[2] for r in results)).digest())
        return _Sent(answer.get("VersionId"), None, checksum)


def _check_copy(
    client: Any, where: S3Target, key: str, sent: _Sent, size: int, sha256: str, lock: bool
) -> tuple[str, datetime | None]:
    """Prove the service holds these bytes: (how it was checked, the lock's end)."""
    head = client.head_object(Bucket=where.bucket, Key=key, ChecksumMode="ENABLED")
    if int(head.get("ContentLength", -1)) != size:
        raise OffsiteObjectInvalid(
            f"{where.label}: the object holds {head.get('ContentLength')} bytes, not {size}; the next run "
            f"copies it again"
        )
    if head.get("Metadata", {}).get(META_SHA256) != sha256:
        raise OffsiteObjectInvalid(
            f"{where.label}: the object's metadata does not name the archive's SHA-256"
        )
    lock_until = head.get("ObjectLockRetainUntilDate")
    if lock and lock_until is None:
        raise OffsiteLockUnavailable(
            f"{where.label}: the service did not keep the Object Lock retention on {key}: check that the "
            f"bucket "
            "has Object Lock enabled"
        )
    service = str(head.get("ChecksumSHA256") or "").split("-")[0]
    if service:
        if service != sent.checksum:
            raise OffsiteObjectInvalid(
                f"{where.label}: the service's SHA-256 of the object differs from the archive's"
            )
        return "service sha256", lock_until
    if sent.etag is not None and str(head.get("ETag", "")).strip('"') == sent.etag:
        return "etag", lock_until
    digest = hashlib.sha256()
    body = client.get_object(Bucket=where.bucket, Key=key)["Body"]
    for chunk in iter(lambda: body.read(_READ), b""):
        digest.update(chunk)
    if digest.hexdigest() != sha256:
        raise OffsiteObjectInvalid(f"{where.label}: the object read back differs from the archive")
    return "read back", lock_until


def copy_backup(
    instance: Instance,
    target: Target,
    local: _Local,
    *,
    actor: str,
    client: Any = None,
    where: S3Target | None = None,
    digest: concurrent.futures.Future[tuple[str, int]] | None = None,
) -> CopyOutcome:
    """Upload one archive to one target and check it; record the outcome (never raises AMSError).

    ``digest``: the archive's SHA-256 and size being computed already (:func:`copy_pending`
    starts it while the client is made); else it is computed here.
    """
    key = target.location.key + local.path.name
    started = time.monotonic()
    outcome = CopyOutcome(target.name, local.backup_id, False, key)
    try:
        if client is None or where is None:
            client, where = target_client(instance, target)
        sha256, size = digest.result() if digest is not None else _sha256_file(local.path)
        outcome.size_bytes = size
        extra: dict[str, Any] = {
            "Metadata": {
                META_SHA256: sha256,
                META_BACKUP: local.backup_id,
                META_INSTANCE: local.instance_id,
                META_CREATED: local.created_at.isoformat(),
                META_KIND: local.kind,
                META_SIZE: str(size),
                **({META_HOME: local.home_id} if local.home_id else {}),
            },
            "ContentType": "application/x-tar",
        }
        if target.lock_days and target.lock_mode:
            check_lock(client, where)
            extra["ObjectLockMode"] = target.lock_mode.upper()
            extra["ObjectLockRetainUntilDate"] = instance.clock.now() + timedelta(days=target.lock_days)
        with _claim(where.bucket, key):
            try:
                sent = _upload(client, where.bucket, key, local.path, size, extra)
                checked_by, lock_until = _check_copy(
                    client, where, key, sent, size, sha256, bool(target.lock_days)
                )
            except Exception as exc:  # noqa: BLE001
                raise failure(exc, where, "put", key=key) from None
        outcome.ok, outcome.checked_by = True, checked_by
        outcome.lock_until = as_utc(lock_until) if lock_until else None
        outcome.seconds = time.monotonic() - started
        _record(instance, target, local, outcome, sha256, sent.version_id, actor)
    except AMSError as exc:
        outcome.error = exc.message
        outcome.seconds = time.monotonic() - started
        _record(instance, target, local, outcome, None, None, actor)
    except OSError as exc:
        outcome.error = f"target {target.name}: the local backup could not be read ({exc.strerror or exc})"
        outcome.seconds = time.monotonic() - started
        _record(instance, target, local, outcome, None, None, actor)
    return outcome


def _record(
    instance: Instance,
    target: Target,
    local: _Local,
    outcome: CopyOutcome,
    sha256: str | None,
    version_id: str | None,
    actor: str,
) -> None:
    from ams.db.models.backups import OffsiteCopy

    now = instance.clock.now()
    with instance.transaction() as session:
        row = session.get(OffsiteCopy, (target.name, local.backup_id))
        if row is None:
            row = OffsiteCopy(target=target.name, backup_id=local.backup_id, attempts=0, last_attempt_at=now)
            session.add(row)
        row.key = outcome.key
        row.attempts = (row.attempts or 0) + 1
        row.last_attempt_at = now
        row.size_bytes = outcome.size_bytes
        if outcome.ok:
            row.state, row.error = "copied", None
            row.sha256, row.version_id, row.lock_until, row.copied_at = (
                sha256,
                version_id,
                outcome.lock_until,
                now,
            )
        else:
            row.state, row.error = "failed", outcome.error
        details: dict[str, Any] = {"target": target.name, "key": outcome.key, "attempt": row.attempts}
        if outcome.ok:
            details.update(
                size=outcome.size_bytes,
                sha256=sha256,
                lock_mode=target.lock_mode,
                lock_until=outcome.lock_until.isoformat() if outcome.lock_until else None,
                checked_by=outcome.checked_by,
                seconds=round(outcome.seconds or 0.0, 3),
            )
        else:
            details["reason"] = outcome.error
        audit.record(
            session,
            instance.clock,
            audit.Event.OFFSITE_COPIED if outcome.ok else audit.Event.OFFSITE_COPY_FAILED,
            actor=actor,
            target=local.backup_id,
            outcome="success" if outcome.ok else "failure",
            details=details,
        )
    if outcome.ok:
        log.info("backup %s copied to target %s (%s)", local.backup_id, target.name, outcome.key)
    else:
        log.error("backup %s not copied to target %s: %s", local.backup_id, target.name, outcome.error)


def _locals_missing(instance: Instance, target: Target, backup_ids: set[str] | None) -> list[_Local]:
    """Verified local archives this home wrote that the target lacks, oldest first."""
    from sqlalchemy import select

    from ams.db.models.backups import BackupRecord, OffsiteCopy

    home_id = instance.home_id
    with instance.session() as session:
        copied = set(
            session.scalars(
                select(OffsiteCopy.backup_id).where(
                    OffsiteCopy.target == target.name, OffsiteCopy.state.in_(("copied", "pruned"))
                )
            )
        )
        query = (
            select(BackupRecord)
            .where(
                BackupRecord.status == "complete",
                BackupRecord.verified_ok.is_(True),
                BackupRecord.kind.in_(("manual", "scheduled")),
            )
            .order_by(BackupRecord.created_at, BackupRecord.id)
        )
        rows = [r for r in session.scalars(query) if r.id not in copied and r.path]
    # Only what the target's own retention would keep: a new target gets the recent history,
    # not every archive the folder holds only to delete it again.
    rows = rows[-target.keep_last :] if target.keep_last else rows
    if target.keep_days:
        cutoff = instance.clock.now() - timedelta(days=target.keep_days)
        rows = [r for r in rows if as_utc(r.created_at) >= cutoff]
    picked = []
    for r in rows:
        if backup_ids is not None and r.id not in backup_ids:
            continue
        if home_id and r.home_id and r.home_id != home_id:
            continue  # another home's archive (a shared folder): that home copies its own
        if not Path(r.path or "").is_file():
            continue
        picked.append(_Local(r.id, Path(r.path or ""), r.kind, as_utc(r.created_at), instance.id, r.home_id))
    return picked


def abort_incomplete(
    instance: Instance, target: Target, client: Any, where: S3Target, *, actor: str
) -> list[str]:
    """Abort the multipart uploads under the target's prefix that no copy of this process is
    making (what an interrupted copy or a crash left); audit them (1516)."""
    aborted: list[str] = []
    try:
        answer = client.list_multipart_uploads(Bucket=where.bucket, Prefix=target.location.key)
    except Exception:  # noqa: BLE001 - a cleanup never stops the copies; they report the cause
        return aborted
    for upload in answer.get("Uploads", []) or []:
        key = str(upload.get("Key", ""))
        if not KEY_NAME.match(key[len(target.location.key) :]):
            continue
        with _uploading_lock:
            busy = (where.bucket, key) in _uploading
        if busy:
            continue
        with contextlib.suppress(Exception):
            client.abort_multipart_upload(Bucket=where.bucket, Key=key, UploadId=upload["UploadId"])
            aborted.append(key)
    if aborted:
        with instance.transaction() as session:
            audit.record(
                session,
                instance.clock,
                audit.Event.OFFSITE_UPLOADS_ABORTED,
                actor=actor,
                details={"target": target.name, "keys": aborted},
            )
    return aborted


def copy_pending(
    instance: Instance, *, actor: str, target: str | None = None, backup_ids: set[str] | None = None
) -> list[CopyOutcome]:
    """Copy every verified local backup a target lacks (all targets, or one), then apply each
    target's retention. Failures are recorded and returned, never raised."""
    targets = [get_target(instance, target)] if target else list_targets(instance)
    outcomes: list[CopyOutcome] = []
    for t in targets:
        missing = _locals_missing(instance, t, backup_ids)
        if not missing:
            continue
        # The archives' SHA-256 (the objects' metadata, needed before their uploads start) is
        # computed in a thread of its own while the client is made and old uploads are
        # aborted: hashlib releases the GIL, so this overlaps boto3's start and the requests.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ams-offsite-hash") as hasher:
            digests = [hasher.submit(_sha256_file, local.path) for local in missing]
            try:
                client, where = target_client(instance, t)
            except AMSError as exc:
                for f in digests:
                    f.cancel()
                for local in missing:
                    outcome = CopyOutcome(
                        t.name, local.backup_id, False, t.location.key + local.path.name, exc.message
                    )
                    _record(instance, t, local, outcome, None, None, actor)
                    outcomes.append(outcome)
                continue
            abort_incomplete(instance, t, client, where, actor=actor)
            done = [
                copy_backup(instance, t, local, actor=actor, client=client, where=where, digest=digest)
                for local, digest in zip(missing, digests, strict=True)
            ]
        outcomes += done
        if any(o.ok for o in done):
            with contextlib.suppress(AMSError):
                prune_target(instance, t.name, actor=actor)
    return outcomes


def copy_new_backup(instance: Instance, backup_id: str, *, actor: str) -> list[CopyOutcome]:
    """After a manual backup: verify it (event 1502), then copy it to every target."""
    from ams.backup.verify import verify_and_record
    from ams.db.models.backups import BackupRecord

    if not list_targets(instance):
        return []
    with instance.session() as session:
        row = session.get(BackupRecord, backup_id)
        path = Path(row.path) if row is not None and row.path else None
        verified = bool(row is not None and row.verified_ok)
    if path is None:
        return []
    if not verified:
        try:
            verify_and_record(path, instance, actor=actor)
        except AMSError as exc:
            return [
                CopyOutcome(
                    t.name, backup_id, False, t.location.key + path.name, f"not copied: {exc.message}"
                )
                for t in list_targets(instance)
            ]
    return copy_pending(instance, actor=actor, backup_ids={backup_id})


# -- what a target holds, and its retention ---------------------------------------------------


def list_objects(
    instance: Instance, name: str, *, client: Any = None, where: S3Target | None = None
) -> list[dict[str, Any]]:
    """The backups the target's bucket holds (read from the bucket, not the catalog), newest first."""
    target = get_target(instance, name)
    if client is None or where is None:
        client, where = target_client(instance, target)
    return read_objects(client, where, target.location.key, now=instance.clock.now())


def read_objects(client: Any, where: S3Target, prefix: str, *, now: datetime) -> list[dict[str, Any]]:
    """Every ``ams-….amsbak`` object under ``prefix`` with its metadata and lock, newest first."""
    found: list[dict[str, Any]] = []
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=where.bucket, Prefix=prefix)
        for page in pages:
            for item in page.get("Contents", []) or []:
                key = str(item["Key"])
                if not KEY_NAME.match(key[len(prefix) :]) or "/" in key[len(prefix) :]:
                    continue
                head = client.head_object(Bucket=where.bucket, Key=key)
                meta = head.get("Metadata", {})
                lock_until = head.get("ObjectLockRetainUntilDate")
                found.append(
                    {
                        "key": key,
                        "url": f"s3://{where.bucket}/{key}",
                        "backup_id": meta.get(META_BACKUP),
                        "instance_id": meta.get(META_INSTANCE),
                        "home_id": meta.get(META_HOME),
                        "kind": meta.get(META_KIND),
                        "created_at": meta.get(META_CREATED) or as_utc(item["LastModified"]).isoformat(),
                        "size_bytes": int(head.get("ContentLength", item.get("Size", 0))),
                        "sha256": meta.get(META_SHA256),
                        "version_id": head.get("VersionId"),
                        "lock_mode": head.get("ObjectLockMode"),
                        "lock_until": as_utc(lock_until).isoformat() if lock_until else None,
                        "locked": bool(lock_until and as_utc(lock_until) > now),
                    }
                )
    except AMSError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise failure(exc, where, "list") from None
    found.sort(key=lambda o: (o["created_at"], o["key"]), reverse=True)
    return found


def prune_target(instance: Instance, name: str, *, actor: str) -> dict[str, Any]:
    """Apply the target's own retention to this instance's objects in its bucket.

    Never the newest; never an object still under its lock (reported as kept-by-lock,
    and a delete the service refuses for a lock is reported the same way).
    """
    from sqlalchemy import update

    from ams.db.models.backups import OffsiteCopy

    target = get_target(instance, name)
    report: dict[str, Any] = {
        "target": name,
        "deleted": [],
        "kept_by_lock": [],
        "policy": target.describe_retention(),
    }
    if not target.keep_days and not target.keep_last:
        return report
    client, where = target_client(instance, target)
    now = instance.clock.now()
    mine = [
        o
        for o in read_objects(client, where, target.location.key, now=now)
        if o["instance_id"] == instance.id
    ]
    keep = {o["key"] for o in mine[:1]}  # the newest
    if target.keep_last:
        keep |= {o["key"] for o in mine[: target.keep_last]}
    if target.keep_days:
        cutoff = now - timedelta(days=target.keep_days)
        keep |= {o["key"] for o in mine if datetime.fromisoformat(o["created_at"]) >= cutoff}
    for obj in mine:
        if obj["key"] in keep:
            continue
        action = "deleted"
        if obj["locked"]:
            action = "kept-by-lock"
        else:
            try:
                args = {"VersionId": obj["version_id"]} if obj["version_id"] else {}
                client.delete_object(Bucket=where.bucket, Key=obj["key"], **args)
            except Exception as exc:  # noqa: BLE001
                error = failure(exc, where, "delete", key=obj["key"])
                if obj["lock_until"] is None or "access denied" not in error.message:
                    report.setdefault("errors", []).append(error.message)
                    continue
                action = "kept-by-lock"
        report["deleted" if action == "deleted" else "kept_by_lock"].append(obj["key"])
        with instance.transaction() as session:
            if action == "deleted" and obj["backup_id"]:
                # Kept as "pruned": the copy is not missing, and no later run uploads it again.
                session.execute(
                    update(OffsiteCopy)
                    .where(OffsiteCopy.target == name, OffsiteCopy.backup_id == obj["backup_id"])
                    .values(state="pruned")
                )
            audit.record(
                session,
                instance.clock,
                audit.Event.OFFSITE_PRUNED,
                actor=actor,
                target=obj["backup_id"],
                details={
                    "target": name,
                    "key": obj["key"],
                    "action": action,
                    "lock_until": obj["lock_until"],
                    "policy": report["policy"],
                },
            )
    return report


# -- status -----------------------------------------------------------------------------------


def offsite_status(instance: Instance) -> list[dict[str, Any]]:
    """For ``ams status``, the console and ``/metrics``: per target, the last copy and its age."""
    from sqlalchemy import func, select

    from ams.db.models.backups import BackupRecord, OffsiteCopy, OffsiteTarget

    now = instance.clock.now()
    out: list[dict[str, Any]] = []
    targets = list_targets(instance)
    if not targets:
        return out
    with instance.session() as session:
        verified = set(
            session.scalars(
                select(BackupRecord.id).where(
                    BackupRecord.status == "complete",
                    BackupRecord.verified_ok.is_(True),
                    BackupRecord.kind.in_(("manual", "scheduled")),
                )
            )
        )
        for t in targets:
            last = session.scalars(
                select(OffsiteCopy)
                .where(OffsiteCopy.target == t.name)
                .order_by(OffsiteCopy.last_attempt_at.desc(), OffsiteCopy.backup_id)
                .limit(1)
            ).first()
            last_ok = session.scalar(
                select(func.max(OffsiteCopy.copied_at)).where(
                    OffsiteCopy.target == t.name, OffsiteCopy.state == "copied"
                )
            )
            copied = set(
                session.scalars(
                    select(OffsiteCopy.backup_id).where(
                        OffsiteCopy.target == t.name, OffsiteCopy.state.in_(("copied", "pruned"))
                    )
                )
            )
            row = session.get(OffsiteTarget, t.name)
            out.append(
                {
                    "name": t.name,
                    "url": t.url,
                    "last_copy": (
                        {
                            "backup_id": last.backup_id,
                            "state": last.state,
                            "at": as_utc(last.last_attempt_at).isoformat(),
                            "error": last.error,
                            "attempts": last.attempts,
                        }
                        if last is not None
                        else None
                    ),
                    "last_success_at": as_utc(last_ok).isoformat() if last_ok else None,
                    "last_success_age_seconds": (now - as_utc(last_ok)).total_seconds() if last_ok else None,
                    "missing": len(verified - copied),
                    "last_drill": (
                        {
                            "at": as_utc(row.last_drill_at).isoformat(),
                            "ok": row.last_drill_ok,
                            "error": row.last_drill_error,
                        }
                        if row is not None and row.last_drill_at
                        else None
                    ),
                }
            )
    return out
