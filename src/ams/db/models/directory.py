"""Directory tables: directories, their regions, their entries, snapshots, the restore journal.

Entries carry a *generation*: the directory reads and writes the rows of its current
generation only. A restore loads the snapshot into the next generation beside the live one,
then switches ``directories.generation`` in one transaction, so a crash at any point leaves
either the old rows or the new ones live, never a mix (docs/reliability.md).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ams.db.models.base import Base, Timestamp

__all__ = [
    "Directory",
    "DirectoryObject",
    "DirectoryRegion",
    "DirectoryRestore",
    "DirectoryValue",
    "Snapshot",
]


class Directory(Base):
    __tablename__ = "directories"

    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    dns_name: Mapped[str] = mapped_column(String(255), unique=True)
    short_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    type: Mapped[str] = mapped_column(String(16))  # MicrosoftAD | ADConnector
    edition: Mapped[str] = mapped_column(String(16))  # Standard | Enterprise
    stage: Mapped[str] = mapped_column(String(16))
    stage_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    stage_changed_at: Mapped[datetime] = mapped_column(Timestamp)
    region: Mapped[str] = mapped_column(String(32))  # the primary region
    description: Mapped[str | None] = mapped_column(String(128), nullable=True)
    size: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # The live generation of the entries, and the last one handed out (restores stage the next).
    generation: Mapped[int] = mapped_column(Integer, default=1)
    last_generation: Mapped[int] = mapped_column(Integer, default=1)
    # Argon2id (PHC string) of the admin's LDAP bind password; None: no admin bind.
    admin_password_hash: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    launched_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


class DirectoryRegion(Base):
    """One region of a directory: the primary, or a replica in an additional region."""

    __tablename__ = "directory_regions"

    directory_id: Mapped[str] = mapped_column(
        String(12), ForeignKey("directories.id", ondelete="CASCADE"), primary_key=True
    )
    region: Mapped[str] = mapped_column(String(32), primary_key=True)
    type: Mapped[str] = mapped_column(String(16))  # Primary | Additional
    status: Mapped[str] = mapped_column(String(16))
    # The generation of entries this replica serves; it converges on the directory's.
    data_generation: Mapped[int] = mapped_column(Integer, default=1)
    launched_at: Mapped[datetime] = mapped_column(Timestamp)
    last_updated_at: Mapped[datetime] = mapped_column(Timestamp)


class DirectoryObject(Base):
    """One entry. ``dn_norm`` (lower case, no spaces around separators) is unique per
    generation, so DNs are case-insensitively unique; ``dn`` keeps the spelling given."""

    __tablename__ = "directory_objects"
    __table_args__ = (
        UniqueConstraint("directory_id", "generation", "dn_norm", name="uq_directory_objects_dn"),
        Index("ix_directory_objects_generation", "directory_id", "generation", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    directory_id: Mapped[str] = mapped_column(String(12), ForeignKey("directories.id", ondelete="CASCADE"))
    generation: Mapped[int] = mapped_column(Integer)
    dn: Mapped[str] = mapped_column(Text)
    dn_norm: Mapped[str] = mapped_column(Text)
    # JSON: ["top", "person", ...]
    object_classes: Mapped[str] = mapped_column(Text)
    # JSON: {"cn": ["x"], "jpegPhoto": [{"b64": "..."}]} (binary values base64, marked)
    attributes: Mapped[str] = mapped_column(Text)


class DirectoryValue(Base):
    """One value of an indexed attribute of one entry, in its compared form
    (ams.directory.valueindex): derived from ``directory_objects``, never snapshotted."""

    __tablename__ = "directory_values"
    __table_args__ = (
        Index("ix_directory_values_lookup", "directory_id", "generation", "attribute", "value"),
    )

    object_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    attribute: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(200), primary_key=True)
    directory_id: Mapped[str] = mapped_column(String(12))
    generation: Mapped[int] = mapped_column(Integer)


class Snapshot(Base):
    __tablename__ = "directory_snapshots"

    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    directory_id: Mapped[str] = mapped_column(String(12), ForeignKey("directories.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(8))  # Manual | Auto
    name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    status: Mapped[str] = mapped_column(String(16))  # Creating | Completed | Failed
    start_time: Mapped[datetime] = mapped_column(Timestamp, index=True)
    completed_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    file: Mapped[str | None] = mapped_column(String(255), nullable=True)  # relative to snapshots/
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    entries: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class DirectoryRestore(Base):
    """The restore journal: one row per restore, kept after it ends as its record.

    state: ``pending`` (queued) → ``loading`` (the snapshot is being copied into
    ``target_generation``) → ``switched`` (the directory serves the new generation; replicas
    converge and old rows are removed) → ``done``; or ``failed``. A row left in ``loading``
    or ``switched`` by a crash is taken up again by the next worker.
    """

    __tablename__ = "directory_restores"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    directory_id: Mapped[str] = mapped_column(
        String(12), ForeignKey("directories.id", ondelete="CASCADE"), index=True
    )
    snapshot_id: Mapped[str] = mapped_column(String(12))
    state: Mapped[str] = mapped_column(String(16), index=True)
    previous_generation: Mapped[int] = mapped_column(Integer)
    target_generation: Mapped[int] = mapped_column(Integer)
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)  # host:pid of the worker
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    requested_by: Mapped[str] = mapped_column(String(128))
    requested_at: Mapped[datetime] = mapped_column(Timestamp)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
