"""The equality index of a directory's usual lookup attributes (``directory_values``).

An LDAP client finds entries by ``uid``, ``cn``, ``sAMAccountName``, ``mail``, ``member``
and the like; without an index every such search reads every entry. Each entry's values
of the attributes in :data:`INDEXED` are kept here, in their compared form (lower case,
DNs normalised, cut at :data:`WIDTH` characters), beside the entry's row id and
generation. A search uses it to find candidates, then checks each candidate exactly, so a
cut value or a near match costs nothing but a look.

The index is derived data: every function that writes ``directory_objects`` keeps it
(:mod:`ams.directory.objects`, the restore's load and clean-up, a directory's deletion),
and migration ``0010_ldap`` builds it for what was there before. Snapshots and LDIF never
carry it.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from ams.db.models.directory import DirectoryObject, DirectoryValue
from ams.directory import dn as dnlib
from ams.errors import BadInput

__all__ = ["INDEXED", "compared", "drop_objects", "index_generation", "index_object", "key"]

INDEXED = frozenset(
    {
        "cn",
        "uid",
        "samaccountname",
        "userprincipalname",
        "mail",
        "member",
        "memberuid",
        "uidnumber",
        "gidnumber",
        "dnshostname",
        "serviceprincipalname",
    }
)
# Attributes whose values compare with case (OpenLDAP: octetStringMatch / caseExactMatch).
CASE_EXACT = frozenset({"userpassword", "unicodepwd", "objectguid", "objectsid"})
# Attributes whose values are DNs: compared as normalised DNs (distinguishedNameMatch).
DN_VALUED = frozenset(
    {
        "member",
        "memberof",
        "manager",
        "managedby",
        "owner",
        "seealso",
        "secretary",
        "uniquemember",
        "distinguishedname",
        "directreports",
    }
)
WIDTH = 200
_BATCH = 5000


def compared(attribute: str, value: str | bytes) -> str | bytes:
    """The form a value is compared in, for ``attribute`` (its name in lower case, no options)."""
    if isinstance(value, bytes):
        return value
    if attribute in DN_VALUED:
        try:
            return dnlib.normalise(value)
        except BadInput:
            return value.lower()
    if attribute in CASE_EXACT:
        return value
    return value.lower()


def key(attribute: str, value: str | bytes) -> str | None:
    """The index key of one value, or None when it is not indexed (binary values)."""
    if isinstance(value, bytes):
        return None
    shown = compared(attribute, value)
    return shown[:WIDTH] if isinstance(shown, str) else None


_COLUMNS = ("object_id", "directory_id", "generation", "attribute", "value")
_INSERT_QMARK = (
    "INSERT INTO directory_values (object_id, directory_id, generation, attribute, value) "
    "VALUES (?, ?, ?, ?, ?)"
)
_INSERT_FORMAT = _INSERT_QMARK.replace("?", "%s")


def _rows(object_id: int, directory_id: str, generation: int, attributes: str) -> list[tuple[Any, ...]]:
    """The index rows of one entry, in the order of :data:`_COLUMNS`."""
    out: dict[tuple[str, str], tuple[Any, ...]] = {}
    for name, values in json.loads(attributes).items():
        attribute = name.split(";", 1)[0].lower()
        if attribute not in INDEXED:
            continue
        for raw in values:
            if not isinstance(raw, str):  # {"base64": ...}: binary, not indexed
                continue
            k = key(attribute, raw)
            if k is not None:
                out[(attribute, k)] = (object_id, directory_id, generation, attribute, k)
    return list(out.values())


def index_object(session: Session, row: DirectoryObject) -> None:
    """(Re)index one entry after it was added or changed (its row id must be known)."""
    session.execute(delete(DirectoryValue).where(DirectoryValue.object_id == row.id))
    rows = _rows(row.id, row.directory_id, row.generation, row.attributes)
    if rows:
        session.execute(insert(DirectoryValue), [dict(zip(_COLUMNS, r, strict=True)) for r in rows])


def drop_objects(session: Session, object_ids: list[int]) -> None:
    if object_ids:
        session.execute(delete(DirectoryValue).where(DirectoryValue.object_id.in_(object_ids)))


def index_generation(
    db: Session | Connection, directory_id: str, generation: int, *, after_id: int = 0
) -> int:
    """Index the rows of one generation whose id is above ``after_id`` (a bulk load's new
    rows); the last id seen, to pass as ``after_id`` next time. The rows go in through the
    driver (``executemany``), in the caller's transaction: a restore of 100,000 entries
    writes some 400,000 of them, and SQLAlchemy's per-row work would double their cost."""
    if isinstance(db, Session):
        db.flush()  # the rows read below must include what the session still holds
        conn = db.connection()
    else:
        conn = db
    sql = _INSERT_QMARK if conn.dialect.paramstyle == "qmark" else _INSERT_FORMAT
    last = after_id
    while True:
        fetched = conn.execute(
            select(DirectoryObject.id, DirectoryObject.attributes)
            .where(
                DirectoryObject.directory_id == directory_id,
                DirectoryObject.generation == generation,
                DirectoryObject.id > last,
            )
            .order_by(DirectoryObject.id)
            .limit(_BATCH)
        ).all()
        if not fetched:
            return last
        rows: list[tuple[Any, ...]] = []
        for object_id, attributes in fetched:
            rows.extend(_rows(object_id, directory_id, generation, attributes))
        if rows:
            conn.exec_driver_sql(sql, rows)
        last = fetched[-1][0]
