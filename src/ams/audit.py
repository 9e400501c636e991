"""Audit events: what happened, who did it, when, with a stable numeric id.

The ids are a contract (SIEM rules match on them): never renumber, never reuse. Each
range belongs to one capability; docs/events.md lists them all and a test checks that the
document and this enum agree.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from ams.clock import Clock, as_utc
from ams.db.sqlite import db_time

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["Event", "EventRecord", "list_events", "record", "record_sqlite"]


class Event(IntEnum):
    # 1000-1099: the instance and its service
    INSTANCE_CREATED = 1000
    SERVICE_STARTED = 1001
    SERVICE_STOPPED = 1002
    SCHEMA_UPGRADED = 1003
    AUDIT_PRUNED = 1004
    AUDIT_RETENTION_CHANGED = 1005
    SERVICE_WORKER_REPLACED = 1006
    # 1100-1199: the master key and the recovery password
    RECOVERY_PASSWORD_SET = 1100
    MASTER_KEY_UNLOCKED = 1101
    MASTER_KEY_UNLOCK_FAILED = 1102
    SERVICE_KEY_REPLACED = 1103
    # 1200-1299: API keys and authentication
    API_KEY_CREATED = 1200
    API_KEY_REVOKED = 1201
    API_AUTH_FAILED = 1202
    AUTH_FAILURES_THROTTLED = 1203
    # 1220-1229: the web console's users
    USER_CREATED = 1220
    USER_DISABLED = 1221
    USER_PASSWORD_CHANGED = 1222
    USER_LOGGED_IN = 1223
    USER_LOGIN_FAILED = 1224
    USER_LOGGED_OUT = 1225
    # 1300-1399: password encryption certificates
    CERTIFICATE_CREATED = 1300
    CERTIFICATE_ACTIVATED = 1301
    CERTIFICATE_EXPORTED = 1302
    CERTIFICATE_IMPORTED = 1303
    CERTIFICATE_LOST = 1304
    # 1400-1499: devices and their passwords
    REGISTRATION_KEY_CREATED = 1400
    REGISTRATION_KEY_DISABLED = 1401
    DEVICE_REGISTERED = 1402
    DEVICE_REGISTRATION_REFUSED = 1403
    DEVICE_APPROVED = 1404
    DEVICE_ROTATION_FORCED = 1405
    DEVICE_AUTH_FAILED = 1406
    PASSWORD_ROTATED = 1407
    PASSWORD_REJECTED = 1408
    PASSWORD_UPDATE_UNDONE = 1409
    PASSWORD_ROLLBACK_DETECTED = 1410
    PASSWORD_READ = 1411
    PASSWORD_HISTORY_PRUNED = 1412
    PASSWORD_POLICY_CHANGED = 1413
    DEVICE_DISABLED = 1414
    # 1415-1419: devices whose password is stored in a directory (ams.vault.legacy)
    DEVICE_DIRECTORY_WRITE_REFUSED = 1415
    # 1500-1599: backups and restore
    BACKUP_CREATED = 1500
    BACKUP_FAILED = 1501
    BACKUP_VERIFIED = 1502
    BACKUP_RESTORED = 1503
    BACKUP_PRUNED = 1504
    BACKUP_SCHEDULE_CHANGED = 1505
    RESTORE_INTERRUPTED_RESOLVED = 1506
    BACKUP_CATALOG_RESCANNED = 1507
    BACKUP_SCHEDULE_PAUSED = 1508
    BACKUP_LEFTOVERS_REMOVED = 1509
    # 1510-1529: offsite copies of backups (S3-compatible object storage)
    OFFSITE_TARGET_ADDED = 1510
    OFFSITE_TARGET_REMOVED = 1511
    OFFSITE_TARGET_TESTED = 1512
    OFFSITE_COPIED = 1513
    OFFSITE_COPY_FAILED = 1514
    OFFSITE_PRUNED = 1515
    OFFSITE_UPLOADS_ABORTED = 1516
    OFFSITE_DRILL = 1517
    # 1600-1649: directories and snapshots
    DIRECTORY_CREATED = 1600
    DIRECTORY_DELETED = 1601
    DIRECTORY_ENTRY_ADDED = 1602
    DIRECTORY_ENTRY_MODIFIED = 1603
    DIRECTORY_ENTRY_DELETED = 1604
    DIRECTORY_IMPORTED = 1605
    SNAPSHOT_CREATED = 1610
    SNAPSHOT_FAILED = 1611
    SNAPSHOT_DELETED = 1612
    SNAPSHOT_AUTO_PRUNED = 1613
    DIRECTORY_RESTORE_STARTED = 1620
    DIRECTORY_RESTORE_COMPLETED = 1621
    DIRECTORY_RESTORE_FAILED = 1622
    DIRECTORY_RESTORE_RESUMED = 1623
    # 1624-1629: directory-stored passwords and directory restores (ams.vault.legacy)
    DIRECTORY_PASSWORDS_ROLLED_BACK = 1624
    # 1630-1639: the LDAP endpoint
    DIRECTORY_ENTRY_RENAMED = 1630
    DIRECTORY_ADMIN_PASSWORD_SET = 1631
    LDAP_BIND_FAILED = 1632

    @property
    def label(self) -> str:
        return self.name.lower()


DESCRIPTIONS: dict[Event, str] = {
    Event.INSTANCE_CREATED: "`ams init` created the instance and its master key",
    Event.SERVICE_STARTED: "`ams serve` started (details: master key state, address)",
    Event.SERVICE_STOPPED: "`ams serve` stopped cleanly",
    Event.SCHEMA_UPGRADED: "the database schema was migrated forward (details: from, to)",
    Event.AUDIT_PRUNED: "audit retention removed events older than the retention (details: removed, before)",
    Event.AUDIT_RETENTION_CHANGED: "the audit retention in effect changed (details: from, to days)",
    Event.SERVICE_WORKER_REPLACED: "a worker of `ams serve` ended while serving; another took its place",
    Event.RECOVERY_PASSWORD_SET: "a new recovery password replaced the recovery wrapping",
    Event.MASTER_KEY_UNLOCKED: "the recovery password unlocked the master key on this machine",
    Event.MASTER_KEY_UNLOCK_FAILED: "an unlock with the recovery password failed (wrong password)",
    Event.SERVICE_KEY_REPLACED: "a new service key and service wrapping were written",
    Event.API_KEY_CREATED: "an API key was created (target: key id; details: name, role)",
    Event.API_KEY_REVOKED: "an API key was revoked (target: key id)",
    Event.API_AUTH_FAILED: "an API request presented an unknown, revoked or wrong key",
    Event.AUTH_FAILURES_THROTTLED: (
        "failed authentications over the limit in one window, recorded as one event with their count"
    ),
    Event.USER_CREATED: "`ams user create` made a console user (target: user id; details: name, role)",
    Event.USER_DISABLED: "a console user was disabled and their sessions ended (target: user id)",
    Event.USER_PASSWORD_CHANGED: "a console user's password was replaced; their sessions ended",
    Event.USER_LOGGED_IN: "a console user logged in (target: user id; details: client address)",
    Event.USER_LOGIN_FAILED: "a console login was refused (wrong name or password, or disabled)",
    Event.USER_LOGGED_OUT: "a console user logged out (target: user id)",
    Event.CERTIFICATE_CREATED: (
        "a certificate and its private key were generated (target: thumbprint; details: scope)"
    ),
    Event.CERTIFICATE_ACTIVATED: "a certificate became the active one of its scope (target: thumbprint)",
    Event.CERTIFICATE_EXPORTED: (
        "a certificate was exported with its private key to a PFX file (target: thumbprint)"
    ),
    Event.CERTIFICATE_IMPORTED: (
        "a certificate was imported from a PFX file (target: thumbprint; details: scope)"
    ),
    Event.CERTIFICATE_LOST: (
        "a certificate's private key was declared lost (target: thumbprint; details: expired)"
    ),
    Event.REGISTRATION_KEY_CREATED: "a registration key was created (target: key id; details: name, limit)",
    Event.REGISTRATION_KEY_DISABLED: "a registration key was disabled (target: key id)",
    Event.DEVICE_REGISTERED: "a device registered with a registration key (target: device id)",
    Event.DEVICE_REGISTRATION_REFUSED: "a registration was refused: unknown, wrong, disabled or used-up key",
    Event.DEVICE_APPROVED: "a pending device was approved (target: device id)",
    Event.DEVICE_ROTATION_FORCED: "a device was told to rotate at its next check-in (target: device id)",
    Event.DEVICE_AUTH_FAILED: "an agent request presented an unknown or wrong device token",
    Event.PASSWORD_ROTATED: "a device reported a new password (target: device id; details: version)",
    Event.PASSWORD_REJECTED: "a device's new password was refused: it could not be decrypted or checked",
    Event.PASSWORD_UPDATE_UNDONE: "a device undid its last password update in the rollback window",
    Event.PASSWORD_ROLLBACK_DETECTED: "a device's password version differs from the server's: it rotates",
    Event.PASSWORD_READ: "someone read a device password (target: device id; details: versions, history)",
    Event.PASSWORD_HISTORY_PRUNED: "old history passwords of a device were removed by retention",
    Event.PASSWORD_POLICY_CHANGED: "the password policy of a scope was changed (details: the new values)",
    Event.DEVICE_DISABLED: "a device was disabled: its token opens nothing any more (target: device id)",
    Event.BACKUP_CREATED: "a backup archive was written (target: backup id; details: kind, file, size)",
    Event.BACKUP_FAILED: "a backup could not be written (details: kind, destination, reason)",
    Event.BACKUP_VERIFIED: "a backup archive was verified (target: backup id; details: deep, result)",
    Event.BACKUP_RESTORED: (
        "the instance was restored from a backup (target: backup id; details: file, recovery "
        "password kept or brought back, home identity, schedule paused, catalog rescan)"
    ),
    Event.BACKUP_PRUNED: "retention removed a backup archive (target: backup id; details: file)",
    Event.BACKUP_SCHEDULE_CHANGED: "the backup schedule or retention was changed (details: new values)",
    Event.RESTORE_INTERRUPTED_RESOLVED: "an interrupted restore was rolled back or finished",
    Event.BACKUP_CATALOG_RESCANNED: (
        "the backup catalog was reconciled with the archives its folders hold, by their headers "
        "(details: folders, added, moved, removed, unreadable)"
    ),
    Event.BACKUP_SCHEDULE_PAUSED: (
        "a restore brought another home's backup schedule: scheduled backups wait until the "
        "destination is confirmed or changed (details: destination, from home, to home)"
    ),
    Event.BACKUP_LEFTOVERS_REMOVED: (
        "what a crashed backup or restore left in a backup folder was removed (details: folder, names)"
    ),
    Event.OFFSITE_TARGET_ADDED: (
        "an offsite target was added or replaced (target: its name; details: url, endpoint, lock, "
        "retention, credentials source)"
    ),
    Event.OFFSITE_TARGET_REMOVED: (
        "an offsite target was removed; its objects stay in the bucket (target: its name)"
    ),
    Event.OFFSITE_TARGET_TESTED: (
        "an offsite target was probed (target: its name; details: each permission and its result)"
    ),
    Event.OFFSITE_COPIED: (
        "a backup was copied to an offsite target and checked there (target: backup id; details: "
        "target, key, size, sha256, lock until)"
    ),
    Event.OFFSITE_COPY_FAILED: (
        "a copy to an offsite target failed; the local backup is kept and the next run retries "
        "(target: backup id; details: target, reason)"
    ),
    Event.OFFSITE_PRUNED: (
        "a target's retention deleted an object, or kept it for its lock (target: backup id; "
        "details: target, key, action, policy)"
    ),
    Event.OFFSITE_UPLOADS_ABORTED: (
        "incomplete multipart uploads an interrupted copy left were aborted (details: target, keys)"
    ),
    Event.OFFSITE_DRILL: (
        "a restore drill from an offsite target ran (target: backup id; details: target, key, age, "
        "seconds, result)"
    ),
    Event.DIRECTORY_CREATED: "a directory was created",
    Event.DIRECTORY_DELETED: "a directory, its entries and its snapshots were deleted",
    Event.DIRECTORY_ENTRY_ADDED: "an entry was added to a directory",
    Event.DIRECTORY_ENTRY_MODIFIED: "an entry of a directory was modified",
    Event.DIRECTORY_ENTRY_DELETED: "an entry was deleted from a directory",
    Event.DIRECTORY_IMPORTED: "LDIF entries were imported into a directory",
    Event.SNAPSHOT_CREATED: "a snapshot was taken",
    Event.SNAPSHOT_FAILED: "taking a snapshot failed; outcome `failure`",
    Event.SNAPSHOT_DELETED: "a snapshot and its file were deleted",
    Event.SNAPSHOT_AUTO_PRUNED: "retention removed an automatic snapshot beyond the newest 5",
    Event.DIRECTORY_RESTORE_STARTED: "a restore from a snapshot started; the directory is Restoring",
    Event.DIRECTORY_RESTORE_COMPLETED: "a restore finished; the directory is Active with the snapshot's data",
    Event.DIRECTORY_RESTORE_FAILED: "a restore failed; the directory is RestoreFailed with its old data",
    Event.DIRECTORY_RESTORE_RESUMED: "an interrupted restore",
    Event.DEVICE_DIRECTORY_WRITE_REFUSED: (
        "a device's write to a directory was refused: not its own object, or not its password attributes"
    ),
    Event.DIRECTORY_PASSWORDS_ROLLED_BACK: (
        "a directory restore brought back older directory-stored passwords; those devices must rotate"
    ),
    Event.DIRECTORY_ENTRY_RENAMED: "an entry of a directory was renamed or moved (LDAP modifyDN)",
    Event.DIRECTORY_ADMIN_PASSWORD_SET: "a directory's admin password was set or replaced",
    Event.LDAP_BIND_FAILED: "an LDAP simple bind was refused (wrong name or password)",
}


@dataclass(frozen=True)
class EventRecord:
    seq: int
    event_id: int
    name: str
    at: datetime
    actor: str
    outcome: str
    target: str | None
    details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "event_id": self.event_id,
            "name": self.name,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "outcome": self.outcome,
            "target": self.target,
            "details": self.details,
        }


def record(
    session: Session,
    clock: Clock,
    event: Event,
    *,
    actor: str,
    target: str | None = None,
    outcome: str = "success",
    details: dict[str, Any] | None = None,
) -> None:
    """Add an audit event to the session; it commits with the change it describes."""
    from ams.db.models import AuditEvent  # here: the event ids above load no database layer

    session.add(
        AuditEvent(
            event_id=int(event),
            at=clock.now(),
            actor=actor,
            outcome=outcome,
            target=target,
            details=json.dumps(details or {}, sort_keys=True),
        )
    )


def record_sqlite(
    conn: sqlite3.Connection,
    clock: Clock,
    event: Event,
    *,
    actor: str,
    target: str | None = None,
    outcome: str = "success",
    details: dict[str, Any] | None = None,
) -> None:
    """:func:`record` for a plain :mod:`sqlite3` connection to the embedded database, inside
    the caller's transaction (see :mod:`ams.db.sqlite` for who writes without SQLAlchemy)."""
    conn.execute(
        "INSERT INTO audit_events (event_id, at, actor, outcome, target, details) VALUES (?, ?, ?, ?, ?, ?)",
        (int(event), db_time(clock.now()), actor, outcome, target, json.dumps(details or {}, sort_keys=True)),
    )


def _name(event_id: int) -> str:
    try:
        return Event(event_id).label
    except ValueError:
        return f"unknown_{event_id}"


def list_events(
    session: Session,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    event_id: int | None = None,
    subject: str | None = None,
    before_seq: int | None = None,
    limit: int = 1000,
) -> list[EventRecord]:
    """The newest ``limit`` events matching, oldest first.

    ``subject`` matches the actor or the target exactly (a device id, ``user:alice``);
    ``before_seq`` pages back: the events older than the oldest one a page showed.
    """
    from sqlalchemy import or_, select

    from ams.db.models import AuditEvent
    from ams.errors import BadInput

    for name, number in (("event_id", event_id), ("before_seq", before_seq)):
        if number is not None and not -(2**63) <= number < 2**63:  # a database integer
            raise BadInput(f"{name} {number} is out of range: event ids are listed in docs/events.md")
    query = select(AuditEvent).order_by(AuditEvent.seq.desc())
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if until is not None:
        query = query.where(AuditEvent.at < until)
    if event_id is not None:
        query = query.where(AuditEvent.event_id == event_id)
    if subject:
        query = query.where(or_(AuditEvent.actor == subject, AuditEvent.target == subject))
    if before_seq is not None:
        query = query.where(AuditEvent.seq < before_seq)
    rows = list(reversed(session.scalars(query.limit(limit)).all()))
    return [
        EventRecord(
            seq=r.seq,
            event_id=r.event_id,
            name=_name(r.event_id),
            at=as_utc(r.at),
            actor=r.actor,
            outcome=r.outcome,
            target=r.target,
            details=json.loads(r.details or "{}"),
        )
        for r in rows
    ]
