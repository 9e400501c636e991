"""Directories: create, list, show, delete.

A directory is ``MicrosoftAD`` (AMS holds its entries and snapshots them) or
``ADConnector`` (a proxy to a directory elsewhere: no snapshots). Its stage is one of
:data:`STAGES`; creating one makes it ``Active`` at once, since there is nothing to launch.
"""

from __future__ import annotations

import re
import secrets
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete as sql_delete
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ams import audit
from ams.crypto.passhash import hash_password, verify_password
from ams.db.models.directory import Directory, DirectoryObject, DirectoryRegion, DirectoryValue, Snapshot
from ams.errors import AlreadyExists, BadInput, DirectoryNotFound, DirectoryUnavailable, WeakPassword
from ams.instance import Instance
from ams.textcheck import check_name, check_text

__all__ = [
    "DIRECTORY_TYPES",
    "EDITIONS",
    "STAGES",
    "DirectoryInfo",
    "RegionInfo",
    "admin_dn",
    "check_admin_password",
    "create",
    "delete",
    "get",
    "list_directories",
    "set_admin_password",
    "snapshot_path",
    "suffix",
    "verify_admin_password",
]

STAGES = (
    "Requested",
    "Creating",
    "Created",
    "Active",
    "Inoperable",
    "Impaired",
    "Restoring",
    "RestoreFailed",
    "Deleting",
    "Deleted",
    "Failed",
    "Updating",
)
DIRECTORY_TYPES = ("MicrosoftAD", "ADConnector")
EDITIONS = ("Standard", "Enterprise")
SIZES = ("Small", "Large")

# The AWS Directory Service model's patterns, so every interface refuses the same input.
_DNS_NAME = re.compile(r"^([a-zA-Z0-9]+[.-])+([a-zA-Z0-9])+$")
_SHORT_NAME = re.compile(r'^[^\\/:*?"<>|.]+[^\\/:*?"<>|]*$')
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]$")
_DIRECTORY_ID = re.compile(r"^d-[0-9a-f]{10}$")


@dataclass(frozen=True)
class RegionInfo:
    region: str
    type: str  # Primary | Additional
    status: str
    launched_at: datetime
    last_updated_at: datetime
    data_generation: int = 0
    in_sync: bool = True

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["launched_at"] = self.launched_at.isoformat()
        out["last_updated_at"] = self.last_updated_at.isoformat()
        return out


@dataclass(frozen=True)
class DirectoryInfo:
    id: str
    dns_name: str
    short_name: str | None
    type: str
    edition: str
    stage: str
    stage_reason: str | None
    stage_changed_at: datetime
    launched_at: datetime | None
    region: str
    regions: list[RegionInfo] = field(default_factory=list)
    description: str | None = None
    size: str | None = None
    generation: int = 1
    entry_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "dns_name": self.dns_name,
            "short_name": self.short_name,
            "type": self.type,
            "edition": self.edition,
            "stage": self.stage,
            "stage_reason": self.stage_reason,
            "stage_changed_at": self.stage_changed_at.isoformat(),
            "launched_at": self.launched_at.isoformat() if self.launched_at else None,
            "region": self.region,
            "regions": [r.to_dict() for r in self.regions],
            "description": self.description,
            "size": self.size,
            "generation": self.generation,
            "entry_count": self.entry_count,
        }


def new_id(prefix: str) -> str:
    """``d-`` / ``s-`` followed by 10 lower-case hex digits."""
    return f"{prefix}-{secrets.token_hex(5)}"


def check_directory_id(directory_id: str) -> str:
    if not isinstance(directory_id, str) or not _DIRECTORY_ID.fullmatch(directory_id):
        raise DirectoryNotFound(
            f"{directory_id!r} is not a directory id (d- and 10 hex digits): list them with "
            "`ams directory list`"
        )
    return directory_id


def check_region(region: str, what: str = "region") -> str:
    if not _REGION.fullmatch(region or ""):
        raise BadInput(f"{what} {region!r} is not a region name: write it like us-east-1")
    return region


def load(session: Session, directory_id: str, *, for_update: bool = False) -> Directory:
    """The directory row, or DirectoryNotFound."""
    check_directory_id(directory_id)
    query = select(Directory).where(Directory.id == directory_id)
    if for_update:
        query = query.with_for_update()
    row = session.scalars(query).one_or_none()
    if row is None:
        raise DirectoryNotFound(f"no directory {directory_id}: list them with `ams directory list`")
    return row


def refuse_while_restoring(row: Directory) -> None:
    if row.stage == "Restoring":
        raise DirectoryUnavailable(
            f"directory {row.id} is restoring: its entries are offline until the restore ends; "
            "try again when `ams directory show` says Active"
        )


def set_stage(row: Directory, stage: str, now: datetime, reason: str | None = None) -> None:
    assert stage in STAGES, stage
    row.stage = stage
    row.stage_reason = reason
    row.stage_changed_at = now


def info(session: Session, row: Directory) -> DirectoryInfo:
    regions = session.scalars(
        select(DirectoryRegion)
        .where(DirectoryRegion.directory_id == row.id)
        .order_by(DirectoryRegion.type.desc(), DirectoryRegion.region)
    ).all()
    count = session.scalar(
        select(func.count())
        .select_from(DirectoryObject)
        .where(DirectoryObject.directory_id == row.id, DirectoryObject.generation == row.generation)
    )
    return DirectoryInfo(
        id=row.id,
        dns_name=row.dns_name,
        short_name=row.short_name,
        type=row.type,
        edition=row.edition,
        stage=row.stage,
        stage_reason=row.stage_reason,
        stage_changed_at=row.stage_changed_at,
        launched_at=row.launched_at,
        region=row.region,
        regions=[
            RegionInfo(
                region=r.region,
                type=r.type,
                status=r.status,
                launched_at=r.launched_at,
                last_updated_at=r.last_updated_at,
                data_generation=r.data_generation,
                in_sync=r.data_generation == row.generation,
            )
            for r in regions
        ],
        description=row.description,
        size=row.size,
        generation=row.generation,
        entry_count=int(count or 0),
    )


def suffix(dns_name: str) -> str:
    """The directory's root DN: ``corp.example.com`` -> ``DC=corp,DC=example,DC=com``."""
    return ",".join(f"DC={label}" for label in dns_name.split("."))


def admin_dn(dns_name: str) -> str:
    """The DN the directory's admin binds as (besides ``Admin@DNSNAME``)."""
    return f"CN=Admin,CN=Users,{suffix(dns_name)}"


# AD's complexity rule, as the Directory Service model's Password pattern states it: 8 to 64
# characters, with three of lower case, upper case, digits and other characters.
_ADMIN_PASSWORD_CLASSES = (r"[a-z]", r"[A-Z]", r"[0-9]", r"[^A-Za-z0-9\s]")


def check_admin_password(password: str) -> str:
    if not isinstance(password, str) or not 8 <= len(password) <= 64:
        raise WeakPassword(
            "the directory admin password must have 8 to 64 characters, with three of: lower case, "
            "upper case, digits, other characters"
        )
    check_text(password, "the directory admin password")
    if sum(1 for c in _ADMIN_PASSWORD_CLASSES if re.search(c, password)) < 3:
        raise WeakPassword(
            "the directory admin password needs three of: lower case, upper case, digits, other "
            "characters (as Active Directory requires)"
        )
    return password


def set_admin_password(instance: Instance, directory_id: str, password: str, *, actor: str) -> DirectoryInfo:
    """Replace the password of the directory's admin (its LDAP bind)."""
    check_admin_password(password)
    hashed = hash_password(password)
    with instance.transaction() as session:
        row = load(session, directory_id, for_update=True)
        if row.type != "MicrosoftAD":
            raise BadInput(
                f"directory {directory_id} is an AD Connector: AMS holds no entries of it to serve"
            )
        row.admin_password_hash = hashed
        audit.record(
            session,
            instance.clock,
            audit.Event.DIRECTORY_ADMIN_PASSWORD_SET,
            actor=actor,
            target=directory_id,
        )
        return info(session, row)


def verify_admin_password(instance: Instance, directory_id: str | None, password: str) -> bool:
    """Whether ``password`` is the admin password of the directory. An unknown directory (None)
    or one without a password costs the same hash and is False."""
    stored: str | None = None
    if directory_id is not None:
        with instance.session() as session:
            stored = session.scalar(select(Directory.admin_password_hash).where(Directory.id == directory_id))
    return verify_password(stored, password)


def _default_short_name(dns_name: str) -> str:
    return dns_name.split(".")[0].upper()[:15]


def create(
    instance: Instance,
    *,
    dns_name: str,
    short_name: str | None,
    type: str = "MicrosoftAD",  # noqa: A002 - the contract's name, as AWS spells it
    edition: str = "Standard",
    region: str = "us-east-1",
    additional_regions: list[str] | tuple[str, ...] = (),
    description: str | None = None,
    size: str | None = None,
    admin_password: str | None = None,
    actor: str,
) -> DirectoryInfo:
    """Create a directory; it is Active at once, with a replica in each additional region.

    ``admin_password``: the password of its admin's LDAP bind (AWS's ``Password``)."""
    if not isinstance(dns_name, str) or len(dns_name) > 255 or not _DNS_NAME.fullmatch(dns_name):
        raise BadInput(f"{dns_name!r} is not a DNS name: write it like corp.example.com")
    if short_name is None:
        short_name = _default_short_name(dns_name)
    check_name(short_name, "the short name")
    if len(short_name) > 15 or not _SHORT_NAME.fullmatch(short_name):
        raise BadInput(
            f"short name {short_name!r} is not valid: up to 15 characters, no dot first and "
            'none of \\ / : * ? " < > |'
        )
    if type not in DIRECTORY_TYPES:
        raise BadInput(f"directory type {type!r} is not known: use MicrosoftAD or ADConnector")
    if edition not in EDITIONS:
        raise BadInput(f"edition {edition!r} is not known: use Standard or Enterprise")
    if size is not None and size not in SIZES:
        raise BadInput(f"size {size!r} is not known: use Small or Large")
    if description is not None:
        check_text(description, "the description")
        if len(description) > 128:
            raise BadInput("the description is longer than 128 characters: shorten it")
    check_region(region)
    hashed = None
    if admin_password is not None:
        if type != "MicrosoftAD":
            raise BadInput("an AD Connector has no admin password in AMS: leave it out")
        hashed = hash_password(check_admin_password(admin_password))
    extra = [check_region(r, "additional region") for r in additional_regions]
    if extra:
        if type != "MicrosoftAD" or edition != "Enterprise":
            raise BadInput(
                "additional regions need a MicrosoftAD directory of the Enterprise edition: "
                "add --edition Enterprise, or leave out --additional-region"
            )
        if region in extra or len(set(extra)) != len(extra):
            raise BadInput("each additional region must differ from the primary region and each other")

    now = instance.clock.now()
    directory_id = new_id("d")
    try:
        with instance.transaction() as session:
            if session.scalar(select(Directory.id).where(func.lower(Directory.dns_name) == dns_name.lower())):
                raise AlreadyExists(
                    f"a directory named {dns_name} already exists; nothing was changed. "
                    "Choose another DNS name"
                )
            row = Directory(
                id=directory_id,
                dns_name=dns_name,
                short_name=short_name,
                type=type,
                edition=edition,
                stage="Active",
                stage_reason=None,
                stage_changed_at=now,
                region=region,
                description=description,
                size=size,
                generation=1,
                last_generation=1,
                admin_password_hash=hashed,
                created_at=now,
                launched_at=now,
            )
            session.add(row)
            session.flush()
            for name, kind in [(region, "Primary"), *((r, "Additional") for r in extra)]:
                session.add(
                    DirectoryRegion(
                        directory_id=directory_id,
                        region=name,
                        type=kind,
                        status="Active",
                        data_generation=1,
                        launched_at=now,
                        last_updated_at=now,
                    )
                )
            audit.record(
                session,
                instance.clock,
                audit.Event.DIRECTORY_CREATED,
                actor=actor,
                target=directory_id,
                details={"dns_name": dns_name, "type": type, "edition": edition, "regions": [region, *extra]},
            )
            session.flush()
            return info(session, row)
    except IntegrityError as exc:
        raise AlreadyExists(
            f"a directory named {dns_name} already exists; nothing was changed. Choose another DNS name"
        ) from exc


def list_directories(instance: Instance, directory_ids: list[str] | None = None) -> list[DirectoryInfo]:
    """Directories, oldest first; with ``directory_ids``, exactly those (DirectoryNotFound
    names the first that does not exist)."""
    with instance.session() as session:
        if directory_ids is not None:
            return [info(session, load(session, d)) for d in directory_ids]
        rows = session.scalars(select(Directory).order_by(Directory.created_at, Directory.id)).all()
        return [info(session, r) for r in rows]


def get(instance: Instance, directory_id: str) -> DirectoryInfo:
    with instance.session() as session:
        return info(session, load(session, directory_id))


def delete(instance: Instance, directory_id: str, *, actor: str) -> DirectoryInfo:
    """Delete a directory with its entries, snapshots and snapshot files.

    Refused while it restores (the restore worker owns it then).
    """
    from ams.db.models.directory import DirectoryRestore

    now = instance.clock.now()
    with instance.transaction() as session:
        row = load(session, directory_id, for_update=True)
        refuse_while_restoring(row)
        before = info(session, row)
        # Bulk deletes first: faster than leaving 100,000 rows to the cascade.
        session.execute(sql_delete(DirectoryValue).where(DirectoryValue.directory_id == directory_id))
        session.execute(sql_delete(DirectoryObject).where(DirectoryObject.directory_id == directory_id))
        session.execute(sql_delete(Snapshot).where(Snapshot.directory_id == directory_id))
        session.execute(sql_delete(DirectoryRestore).where(DirectoryRestore.directory_id == directory_id))
        session.execute(sql_delete(DirectoryRegion).where(DirectoryRegion.directory_id == directory_id))
        session.delete(row)
        audit.record(
            session,
            instance.clock,
            audit.Event.DIRECTORY_DELETED,
            actor=actor,
            target=directory_id,
            details={"dns_name": before.dns_name},
        )
    # The rows are gone for good; the files follow (a crash here leaves only orphan files).
    shutil.rmtree(instance.home.snapshots_dir / directory_id, ignore_errors=True)
    return DirectoryInfo(
        **{
            **{f: getattr(before, f) for f in before.__dataclass_fields__},
            "stage": "Deleted",
            "stage_reason": None,
            "stage_changed_at": now,
            "entry_count": 0,
        }
    )


def snapshot_path(instance: Instance, row: Snapshot) -> Path:
    """Where a snapshot's file is: ams.directory.snapshots writes it, the restore worker
    (ams.directory.restore) reads it; here, so that neither imports the other for it."""
    return instance.home.snapshots_dir / (row.file or f"{row.directory_id}/{row.id}.snap")
