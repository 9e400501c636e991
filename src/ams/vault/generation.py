"""The instance's generation number: every change of certificates or policies adds one, in
the transaction that makes the change, so that each process's cache (ams.vault.hotcache)
sees it at its next request. Its own module so that the services that change what is
cached need not import the cache, which types against them."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from ams.db.models import InstanceRow

__all__ = ["bump"]


def bump(session: Session) -> None:
    """Add one to the generation, inside the caller's transaction (the change it announces)."""
    session.execute(update(InstanceRow).values(generation=InstanceRow.generation + 1))
