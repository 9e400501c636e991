"""One node at a time: the PostgreSQL advisory lock that keeps a scheduled job to one node.

Several ``ams serve`` nodes may share one PostgreSQL database; each periodic job (the backup
schedule, the audit trail's upkeep) takes its own lock before it runs, so only one node
runs it. The embedded database has one node by construction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from sqlalchemy import text

if TYPE_CHECKING:
    from ams.instance import Instance

__all__ = ["one_node"]


@contextlib.contextmanager
def one_node(instance: Instance, key: int) -> Iterator[bool]:
    """Whether this node holds the advisory lock ``key`` (held until the block ends)."""
    if instance.engine_name != "postgresql":
        yield True
        return
    with instance.engine.connect() as conn:
        mine = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
        try:
            yield mine
        finally:
            if mine:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()
