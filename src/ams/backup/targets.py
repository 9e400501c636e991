"""Offsite targets: the S3-compatible buckets every verified backup is also copied to.

A target is a bucket and a prefix (``s3://BUCKET/PREFIX``) on AWS or any service that
speaks the S3 API (``--endpoint-url``), with optional Object Lock retention and a retention
rule of its own. Its credentials come from the standard AWS chain, or are given once and
kept sealed by the secret box under the master key (purpose ``offsite``, context
``offsite:NAME``): never in ams.toml, a log, an event, a URL or an error. The copies
themselves are :mod:`ams.backup.offsite`'s.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ams import audit
from ams.backup.s3 import Credentials, Location, S3Target, failure, make_client, parse_url
from ams.clock import as_utc
from ams.errors import (
    AlreadyExists,
    AMSError,
    BadInput,
    OffsiteLockUnavailable,
    OffsiteObjectInvalid,
    OffsiteTargetNotFound,
)

if TYPE_CHECKING:
    from ams.db.models.backups import OffsiteTarget
    from ams.instance import Instance

__all__ = [
    "LOCK_MODES",
    "Target",
    "add_target",
    "check_lock",
    "get_target",
    "list_targets",
    "remove_target",
    "target_client",
    "test_target",
]

_PURPOSE = "offsite"
LOCK_MODES = ("governance", "compliance")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_ENDPOINT = re.compile(r"^https?://[^\s/?#@]+(:\d+)?/?$")
_REGION = re.compile(r"^[a-z0-9-]{1,64}$")
_KEY_ID = re.compile(r"^[A-Za-z0-9_+=,.@-]{3,128}$")


@dataclass(frozen=True)
class Target:
    name: str
    location: Location
    endpoint_url: str | None
    region: str | None
    lock_days: int | None
    lock_mode: str | None
    keep_days: int | None
    keep_last: int | None
    access_key_id: str | None
    drill_days: int | None
    created_at: datetime

    @property
    def url(self) -> str:
        return self.location.url

    @property
    def credentials_source(self) -> str:
        return "stored" if self.access_key_id else "chain"

    def describe_retention(self) -> str:
        rules = []
        if self.keep_days:
            rules.append(f"keep {self.keep_days} days")
        if self.keep_last:
            rules.append(f"keep the last {self.keep_last}")
        return " and ".join(rules) if rules else "keep every copy"

    def to_dict(self) -> dict[str, Any]:
        key_id = self.access_key_id
        return {
            "name": self.name,
            "url": self.url,
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "lock_days": self.lock_days,
            "lock_mode": self.lock_mode,
            "keep_days": self.keep_days,
            "keep_last": self.keep_last,
            "retention": self.describe_retention(),
            "credentials": self.credentials_source,
            # An identifier, not the secret; shown shortened all the same.
            "access_key_id": f"{key_id[:4]}…{key_id[-4:]}" if key_id else None,
            "drill_days": self.drill_days,
            "created_at": self.created_at.isoformat(),
        }


def _target_of(row: OffsiteTarget) -> Target:
    return Target(
        name=row.name,
        location=Location(row.bucket, row.prefix),
        endpoint_url=row.endpoint_url,
        region=row.region,
        lock_days=row.lock_days,
        lock_mode=row.lock_mode,
        keep_days=row.keep_days,
        keep_last=row.keep_last,
        access_key_id=row.access_key_id,
        drill_days=row.drill_days,
        created_at=as_utc(row.created_at),
    )


def _context(name: str) -> str:
    return f"offsite:{name}"


def _check_options(
    name: str,
    endpoint_url: str | None,
    region: str | None,
    lock_days: int | None,
    lock_mode: str | None,
    keep_days: int | None,
    keep_last: int | None,
    access_key_id: str | None,
    secret: str | None,
    drill_days: int | None,
) -> None:
    if not _NAME.match(name):
        raise BadInput(
            f"{name[:70]!r} is not a target name: 1-64 lower-case letters, digits, - and _, "
            "starting with a letter or digit"
        )
    if endpoint_url is not None and not _ENDPOINT.match(endpoint_url):
        raise BadInput("--endpoint-url must be http(s)://HOST[:PORT], without a path or credentials")
    if region is not None and not _REGION.match(region):
        raise BadInput("--region must be a region name such as eu-west-1")
    if lock_mode is not None and lock_mode not in LOCK_MODES:
        raise BadInput("--lock-mode must be governance or compliance")
    if (lock_days is None) != (lock_mode is None):
        raise BadInput(
            "--lock-days and --lock-mode go together (for example --lock-days 30 --lock-mode governance)"
        )
    if lock_days is not None and not 1 <= lock_days <= 3650:
        raise BadInput("--lock-days must be between 1 and 3650")
    if keep_days is not None and keep_last is not None:
        raise BadInput("choose one of --keep-days and --keep-last")
    if keep_days is not None and not 1 <= keep_days <= 3650:
        raise BadInput("--keep-days must be between 1 and 3650")
    if keep_last is not None and not 1 <= keep_last <= 10000:
        raise BadInput("--keep-last must be between 1 and 10000")
    if lock_days is not None and keep_days is not None and keep_days < lock_days:
        raise BadInput(
            f"--keep-days {keep_days} is shorter than --lock-days {lock_days}: the lock would keep every "
            f"copy "
            "longer anyway; give --keep-days of at least the lock"
        )
    if (access_key_id is None) != (secret is None):
        raise BadInput("--access-key-id goes with its secret on standard input")
    if access_key_id is not None and not _KEY_ID.match(access_key_id):
        raise BadInput("--access-key-id is not an access key id (letters, digits and +=,.@_-)")
    if secret is not None and (not secret or len(secret) > 256 or re.search(r"[\s\x00-\x1f\x7f]", secret)):
        raise BadInput("the secret access key read from standard input is empty, too long or holds spaces")
    if drill_days is not None and not 1 <= drill_days <= 365:
        raise BadInput("--drill-days must be between 1 and 365")


def add_target(
    instance: Instance,
    *,
    name: str,
    url: str,
    actor: str,
    endpoint_url: str | None = None,
    region: str | None = None,
    lock_days: int | None = None,
    lock_mode: str | None = None,
    keep_days: int | None = None,
    keep_last: int | None = None,
    access_key_id: str | None = None,
    secret: str | None = None,
    drill_days: int | None = None,
    replace: bool = False,
    check: bool = True,
) -> Target:
    """Add (or with ``replace`` replace) a target. With ``check``, the bucket must exist and
    hold Object Lock when a lock is asked for; nothing is stored otherwise."""
    from ams.db.models.backups import OffsiteTarget

    _check_options(
        name,
        endpoint_url,
        region,
        lock_days,
        lock_mode,
        keep_days,
        keep_last,
        access_key_id,
        secret,
        drill_days,
    )
    location = parse_url(url, option="--s3", prefix=True)
    box = instance.keyring.box if secret is not None else None  # MasterKeyLocked before anything
    with instance.session() as session:
        exists = session.get(OffsiteTarget, name) is not None
    if exists and not replace:
        raise AlreadyExists(
            f"a target named {name} exists: remove it first (`ams backup target remove {name}`) or pass "
            f"--replace"
        )
    credentials = Credentials(access_key_id, secret) if access_key_id and secret else None
    where = S3Target(f"target {name}", location.bucket, endpoint_url, region, credentials)
    if check:
        client = make_client(where)
        _check_bucket(client, where, lock_days is not None)
    now = instance.clock.now()
    with instance.transaction() as session:
        row = session.get(OffsiteTarget, name)
        if row is None:
            row = OffsiteTarget(name=name, created_at=now)
            session.add(row)
        row.bucket, row.prefix = location.bucket, location.key
        row.endpoint_url, row.region = endpoint_url, region
        row.lock_days, row.lock_mode = lock_days, lock_mode
        row.keep_days, row.keep_last = keep_days, keep_last
        row.drill_days = drill_days
        row.access_key_id = access_key_id
        row.secret_sealed = (
            box.seal(_PURPOSE, _context(name), secret.encode("utf-8")) if box is not None and secret else None
        )
        row.updated_at = now
        target = _target_of(row)
        audit.record(
            session,
            instance.clock,
            audit.Event.OFFSITE_TARGET_ADDED,
            actor=actor,
            target=name,
            details={
                "url": target.url,
                "endpoint_url": endpoint_url,
                "region": region,
                "lock_days": lock_days,
                "lock_mode": lock_mode,
                "retention": target.describe_retention(),
                "credentials": target.credentials_source,
                "replaced": exists,
            },
        )
    return target


def _check_bucket(client: Any, where: S3Target, lock: bool) -> None:
    try:
        # A listing rather than HEAD: its error names the cause (a HEAD answers a bare 403).
        client.list_objects_v2(Bucket=where.bucket, MaxKeys=1)
    except Exception as exc:  # noqa: BLE001 - translated to one line
        raise failure(exc, where, "bucket") from None
    if lock:
        check_lock(client, where)


def check_lock(client: Any, where: S3Target) -> None:
    try:
        answer = client.get_object_lock_configuration(Bucket=where.bucket)
    except Exception as exc:  # noqa: BLE001
        raise failure(exc, where, "lock") from None
    if answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled":
        raise OffsiteLockUnavailable(
            f"{where.label}: the bucket {where.bucket} has no Object Lock, which --lock-days needs: create a "
            "bucket with Object Lock enabled, or add the target without --lock-days"
        )


def list_targets(instance: Instance) -> list[Target]:
    from sqlalchemy import select

    from ams.db.models.backups import OffsiteTarget

    with instance.session() as session:
        return [_target_of(r) for r in session.scalars(select(OffsiteTarget).order_by(OffsiteTarget.name))]


def get_target(instance: Instance, name: str) -> Target:
    from ams.db.models.backups import OffsiteTarget

    with instance.session() as session:
        row = session.get(OffsiteTarget, name)
        if row is None:
            raise OffsiteTargetNotFound(
                f"no offsite target named {name[:64]!r}: list them with `ams backup target list`"
            )
        return _target_of(row)


def remove_target(instance: Instance, name: str, *, actor: str) -> Target:
    """Forget a target and its sealed credentials; what the bucket holds stays there."""
    from sqlalchemy import delete

    from ams.db.models.backups import OffsiteCopy, OffsiteTarget

    target = get_target(instance, name)
    with instance.transaction() as session:
        session.execute(delete(OffsiteCopy).where(OffsiteCopy.target == name))
        row = session.get(OffsiteTarget, name)
        if row is not None:
            session.delete(row)
        audit.record(
            session,
            instance.clock,
            audit.Event.OFFSITE_TARGET_REMOVED,
            actor=actor,
            target=name,
            details={"url": target.url},
        )
    return target


def target_client(instance: Instance, target: Target) -> tuple[Any, S3Target]:
    """A client for the target, with its sealed credentials opened (or the AWS chain)."""
    from ams.db.models.backups import OffsiteTarget

    credentials = None
    if target.access_key_id:
        with instance.session() as session:
            row = session.get(OffsiteTarget, target.name)
            sealed = row.secret_sealed if row is not None else None
        if sealed is not None:
            secret = instance.keyring.box.open(_PURPOSE, _context(target.name), sealed).decode("utf-8")
            credentials = Credentials(target.access_key_id, secret)
    where = S3Target(
        f"target {target.name}", target.location.bucket, target.endpoint_url, target.region, credentials
    )
    return make_client(where), where


def test_target(instance: Instance, name: str, *, actor: str) -> dict[str, Any]:
    """Write, read back and remove a small probe object; check the lock when one is asked.

    Returns the report of every step; raises the first failure (it names the permission)
    after recording event 1512 either way.
    """
    target = get_target(instance, name)
    client, where = target_client(instance, target)
    probe = f"{target.location.key}.ams-probe-{os.urandom(6).hex()}"
    body = os.urandom(64)
    steps: list[dict[str, Any]] = []
    first: AMSError | None = None

    def step(label: str, permission: str, action: str, work: Callable[[], None]) -> bool:
        nonlocal first
        try:
            work()
        except Exception as exc:  # noqa: BLE001 - each step reports its own failure
            error = failure(exc, where, action, key=probe)
            steps.append({"step": label, "permission": permission, "ok": False, "error": error.message})
            first = first or error
            return False
        steps.append({"step": label, "permission": permission, "ok": True, "error": None})
        return True

    def read_back() -> None:
        got = client.get_object(Bucket=where.bucket, Key=probe)["Body"].read()
        if got != body:
            raise OffsiteObjectInvalid(
                f"{where.label}: the probe object read back differs from what was written"
            )

    listing = lambda: client.list_objects_v2(Bucket=where.bucket, Prefix=target.location.key, MaxKeys=1)  # noqa: E731
    if step("list", "s3:ListBucket", "bucket", listing):
        if target.lock_days:
            step(
                "object lock",
                "s3:GetBucketObjectLockConfiguration",
                "lock",
                lambda: check_lock(client, where),
            )
        if step(
            "write",
            "s3:PutObject",
            "put",
            lambda: client.put_object(Bucket=where.bucket, Key=probe, Body=body),
        ):
            step("read", "s3:GetObject", "get", read_back)
            step(
                "remove",
                "s3:DeleteObject",
                "delete",
                lambda: client.delete_object(Bucket=where.bucket, Key=probe),
            )
    ok = first is None
    report = {"target": name, "url": target.url, "ok": ok, "steps": steps}
    with instance.transaction() as session:
        audit.record(
            session,
            instance.clock,
            audit.Event.OFFSITE_TARGET_TESTED,
            actor=actor,
            target=name,
            outcome="success" if ok else "failure",
            details={"steps": steps},
        )
    if first is not None:
        raise first
    return report
