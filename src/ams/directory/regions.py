"""Replicas: a directory's copies in its additional regions.

Every region of a directory serves one *generation* of its entries. Writes land in the live
generation, which all in-sync replicas share; a restore moves the primary to a new
generation at once and each replica follows (``Updating`` → ``Active``) as :func:`converge`
reaches it. Old generations are removed only when every replica has moved on.
"""

from __future__ import annotations

from sqlalchemy import select

from ams.db.models.directory import DirectoryRegion
from ams.instance import Instance

__all__ = ["converge"]


def converge(instance: Instance, directory_id: str, generation: int) -> list[str]:
    """Bring every replica of the directory to ``generation``; return the regions moved."""
    with instance.session() as session:
        lagging = session.scalars(
            select(DirectoryRegion.region).where(
                DirectoryRegion.directory_id == directory_id,
                (DirectoryRegion.data_generation != generation) | (DirectoryRegion.status != "Active"),
            )
        ).all()
    moved = []
    for region in lagging:
        # One replica at a time, as replication reaches each region in turn.
        with instance.transaction() as session:
            row = session.get(DirectoryRegion, (directory_id, region))
            if row is None:
                continue
            row.data_generation = generation
            row.status = "Active"
            row.last_updated_at = instance.clock.now()
        moved.append(region)
    return moved
