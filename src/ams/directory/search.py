"""Searching a directory's entries as LDAP does: a base, a scope and a filter (RFC 4515).

The filter is a small tree of :class:`Filter` nodes (the LDAP server builds it from the
protocol's ASN.1; anything else may build it too). Matching follows what an AD or OpenLDAP
server does for its usual attributes: attribute names without regard to case, values
without regard to case (except the few case-exact ones and binary values), DN-valued
attributes compared as normalised DNs, numbers ordered as numbers.

Speed: what SQL can narrow is pushed down (the scope by ``dn_norm``, and a superset of
the filter's matches by text patterns over the stored JSON), and the exact filter runs on
the rows that come back. Results come in pages ordered by row id, so a client can ask for
the next page (the paged-results control) with the last id it saw.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Integer, and_, bindparam, false, or_, select, true
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Select
from sqlalchemy.sql.elements import ColumnElement

from ams.db.models.directory import Directory, DirectoryObject, DirectoryValue
from ams.directory import dn as dnlib
from ams.directory import objects, valueindex
from ams.directory.entry import Entry, Value
from ams.errors import DirectoryNotFound, DirectoryUnavailable
from ams.instance import Instance

__all__ = [
    "And",
    "Equal",
    "Filter",
    "Greater",
    "Less",
    "Not",
    "Or",
    "Page",
    "Present",
    "Scope",
    "Substrings",
    "Undefined",
    "is_short",
    "matches",
    "search_page",
]

Scope = Literal["base", "one", "sub"]

CASE_EXACT = valueindex.CASE_EXACT
DN_VALUED = valueindex.DN_VALUED


@dataclass(frozen=True)
class And:
    items: tuple[Filter, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Filter, ...]


@dataclass(frozen=True)
class Not:
    item: Filter


@dataclass(frozen=True)
class Equal:
    attribute: str
    value: Value


@dataclass(frozen=True)
class Greater:
    """``attribute>=value``."""

    attribute: str
    value: Value


@dataclass(frozen=True)
class Less:
    """``attribute<=value``."""

    attribute: str
    value: Value


@dataclass(frozen=True)
class Present:
    attribute: str


@dataclass(frozen=True)
class Substrings:
    attribute: str
    initial: Value | None
    any: tuple[Value, ...]
    final: Value | None


@dataclass(frozen=True)
class Undefined:
    """A filter this server cannot evaluate (an extensible match): it matches nothing."""


Filter = And | Or | Not | Equal | Greater | Less | Present | Substrings | Undefined


# -- matching ---------------------------------------------------------------------------------


def _base_name(attribute: str) -> str:
    """``cn;lang-en`` -> ``cn``, lower case."""
    return attribute.split(";", 1)[0].lower()


def _norm(attribute: str, value: Value) -> Value:
    """The form a value is compared in, for ``attribute`` (already lower case)."""
    return valueindex.compared(attribute, value)


def _values(entry: Entry, attribute: str) -> list[Value]:
    if attribute == "objectclass":
        return list(entry.object_classes)
    if attribute in ("distinguishedname", "entrydn") and not entry.get(attribute):
        return [entry.dn]
    return entry.get(attribute)


def _as_number(value: Value) -> int | None:
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
        return int(value)
    return None


def _ordered(attribute: str, have: Value, want: Value, compare: Callable[[Any, Any], bool]) -> bool:
    a, b = _as_number(have), _as_number(want)
    if a is not None and b is not None:
        return compare(a, b)
    na, nb = _norm(attribute, have), _norm(attribute, want)
    if type(na) is not type(nb):
        return False
    return compare(na, nb)


def _substring_match(value: Value, node: Substrings, attribute: str) -> bool:
    text = _norm(attribute, value)
    parts = [_norm(attribute, p) for p in (node.initial, *node.any, node.final) if p is not None]
    if any(type(p) is not type(text) for p in parts):
        return False
    pos = 0
    if node.initial is not None:
        first = _norm(attribute, node.initial)
        if not text.startswith(first):  # type: ignore[arg-type]
            return False
        pos = len(first)
    for piece in node.any:
        p = _norm(attribute, piece)
        found = text.find(p, pos)  # type: ignore[arg-type]
        if found < 0:
            return False
        pos = found + len(p)
    if node.final is not None:
        last = _norm(attribute, node.final)
        return len(text) - pos >= len(last) and text.endswith(last)  # type: ignore[arg-type]
    return True


def matches(node: Filter, entry: Entry) -> bool:
    """Whether ``entry`` matches the filter (an undefined result counts as no match)."""
    if isinstance(node, And):
        return all(matches(i, entry) for i in node.items)
    if isinstance(node, Or):
        return any(matches(i, entry) for i in node.items)
    if isinstance(node, Not):
        return not matches(node.item, entry)
    if isinstance(node, Undefined):
        return False
    attribute = _base_name(node.attribute)
    values = _values(entry, attribute)
    if isinstance(node, Present):
        return attribute == "objectclass" or bool(values)
    if isinstance(node, Equal):
        want = _norm(attribute, node.value)
        return any(_norm(attribute, v) == want for v in values)
    if isinstance(node, Greater):
        return any(_ordered(attribute, v, node.value, lambda a, b: a >= b) for v in values)
    if isinstance(node, Less):
        return any(_ordered(attribute, v, node.value, lambda a, b: a <= b) for v in values)
    return any(_substring_match(v, node, attribute) for v in values)


# -- what SQL can narrow ----------------------------------------------------------------------

# Text that stands for itself inside the stored JSON (ensure_ascii, so no \u escapes) and in
# a LIKE pattern once % _ and \ are escaped.
_PLAIN = re.compile(r"[ -!#-\[\]-~]*")


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _plain(value: Value | None) -> str | None:
    if isinstance(value, str) and _PLAIN.fullmatch(value):
        return value
    return None


def _ilike(column: Any, pattern: str, pg: bool) -> ColumnElement[bool]:
    # SQLite's LIKE already ignores ASCII case (and lower() of every row would cost a copy);
    # PostgreSQL needs ILIKE.
    if pg:
        return column.ilike(pattern, escape="\\")  # type: ignore[no-any-return]
    return column.like(pattern, escape="\\")  # type: ignore[no-any-return]


def _hint(node: Filter, pg: bool) -> ColumnElement[bool] | None:
    """A SQL condition true for every row the filter matches (and maybe more), or None when
    nothing useful can be said. ILIKE: SQLite's LIKE ignores ASCII case, PostgreSQL's ILIKE too."""
    if isinstance(node, And):
        parts = [h for h in (_hint(i, pg) for i in node.items) if h is not None]
        return and_(*parts) if parts else None
    if isinstance(node, Or):
        hints = [_hint(i, pg) for i in node.items]
        if not hints:
            return false()
        if any(h is None for h in hints):
            return None
        return or_(*[h for h in hints if h is not None])
    if isinstance(node, Undefined):
        return false()
    if isinstance(node, (Not, Greater, Less)):
        return None
    attribute = _base_name(node.attribute)
    if attribute in DN_VALUED or attribute in CASE_EXACT or attribute in ("distinguishedname", "entrydn"):
        return None
    column = DirectoryObject.object_classes if attribute == "objectclass" else DirectoryObject.attributes
    if isinstance(node, Present):
        if attribute == "objectclass" or not _plain(node.attribute):
            return None
        return _ilike(DirectoryObject.attributes, f'%"{_like(node.attribute.split(";")[0])}":%', pg)
    if isinstance(node, Equal):
        value = _plain(node.value)
        if value is None:
            return None
        return _ilike(column, f'%"{_like(value)}"%', pg)
    pieces = [node.initial, *node.any, node.final]
    plain = [_plain(p) for p in pieces if p is not None]
    if any(p is None for p in plain):
        return None
    pattern = ('%"' if node.initial is not None else "%") + "%".join(_like(p or "") for p in plain)
    pattern += '"%' if node.final is not None else "%"
    return _ilike(column, pattern, pg)


def _indexed(node: Filter, directory_id: str, generation: int) -> ColumnElement[bool] | None:
    """Row ids from the equality index (ams.directory.valueindex) that hold every match of
    the filter, or None when the filter has no indexed equality that must hold."""
    if isinstance(node, Equal):
        attribute = _base_name(node.attribute)
        if attribute not in valueindex.INDEXED:
            return None
        key = valueindex.key(attribute, node.value)
        if key is None:
            return None
        return DirectoryObject.id.in_(
            select(DirectoryValue.object_id).where(
                DirectoryValue.directory_id == directory_id,
                DirectoryValue.generation == generation,
                DirectoryValue.attribute == attribute,
                DirectoryValue.value == key,
            )
        )
    if isinstance(node, And):
        for item in node.items:
            found = _indexed(item, directory_id, generation)
            if found is not None:
                return found
    if isinstance(node, Or) and node.items:
        parts = [_indexed(i, directory_id, generation) for i in node.items]
        if all(p is not None for p in parts):
            return or_(*[p for p in parts if p is not None])
    return None


def _scope(base_norm: str, scope: Scope, suffix_norm: str) -> ColumnElement[bool]:
    if scope == "base":
        return DirectoryObject.dn_norm == base_norm
    under = DirectoryObject.dn_norm.like("%," + _like(base_norm), escape="\\")
    if scope == "one":
        return under
    if base_norm == suffix_norm:
        return true()  # every entry of the directory is under its suffix
    return (DirectoryObject.dn_norm == base_norm) | under


def _in_scope(dn_norm: str, base_norm: str, scope: Scope) -> bool:
    if scope == "base":
        return dn_norm == base_norm
    if scope == "one":
        return dnlib.parent(dn_norm) == base_norm
    return dn_norm == base_norm or dn_norm.endswith("," + base_norm)


@dataclass(frozen=True)
class Page:
    """One page of results: (row id, entry) pairs in id order; ``last_id`` is where the next
    page starts (also past rows that did not match); ``done`` when no rows are left."""

    entries: list[tuple[int, Entry]]
    last_id: int
    done: bool


# Statements built once: SQLAlchemy then reuses their compiled form and cache key, and a
# search is a Core connection's few short statements, not an ORM session's.
_COLUMNS = (
    DirectoryObject.id,
    DirectoryObject.dn,
    DirectoryObject.dn_norm,
    DirectoryObject.object_classes,
    DirectoryObject.attributes,
)
_STATE = select(Directory.generation, Directory.stage).where(Directory.id == bindparam("d"))
_EXISTS = select(DirectoryObject.id).where(
    DirectoryObject.directory_id == bindparam("d"),
    DirectoryObject.generation == bindparam("g"),
    DirectoryObject.dn_norm == bindparam("n"),
)
_BASE = select(*_COLUMNS).where(
    DirectoryObject.directory_id == bindparam("d"),
    DirectoryObject.generation == bindparam("g"),
    DirectoryObject.dn_norm == bindparam("n"),
    DirectoryObject.id > bindparam("after"),
)
_BY_VALUE = (
    select(*_COLUMNS)
    .where(
        DirectoryObject.directory_id == bindparam("d"),
        DirectoryObject.generation == bindparam("g"),
        DirectoryObject.id > bindparam("after"),
        DirectoryObject.id.in_(
            select(DirectoryValue.object_id).where(
                DirectoryValue.directory_id == bindparam("d"),
                DirectoryValue.generation == bindparam("g"),
                DirectoryValue.attribute == bindparam("a"),
                DirectoryValue.value == bindparam("v"),
            )
        ),
    )
    .order_by(DirectoryObject.id)
    .limit(bindparam("rows", type_=Integer, literal_execute=True))
)


def _one_indexed(node: Filter) -> tuple[str, str] | None:
    """(attribute, index key) when the filter is one indexed equality, or an AND led by one."""
    if isinstance(node, And):
        for item in node.items:
            found = _one_indexed(item)
            if found is not None:
                return found
        return None
    if isinstance(node, Equal):
        attribute = _base_name(node.attribute)
        if attribute in valueindex.INDEXED:
            key = valueindex.key(attribute, node.value)
            if key is not None:
                return attribute, key
    return None


def is_short(node: Filter, scope: Scope) -> bool:
    """Whether a search reads only a few rows by an index (a base read, an indexed equality):
    the LDAP listener answers those in its own thread, without a hand-off."""
    return scope == "base" or _one_indexed(node) is not None


def _state(connection: Connection, directory_id: str) -> int:
    """The generation to read, refusing as objects.open_directory does (the row read fresh by
    every search: a restore, a deletion or a new generation in another process shows at once)."""
    row = connection.execute(_STATE, {"d": directory_id}).one_or_none()
    if row is None:
        raise DirectoryNotFound(f"no directory {directory_id}: list them with `ams directory list`")
    generation, stage = row
    if stage == "Restoring":
        raise DirectoryUnavailable(
            f"directory {directory_id} is restoring: its entries are offline until the restore ends; "
            "try again when `ams directory show` says Active"
        )
    return int(generation)


def search_page(
    instance: Instance,
    directory_id: str,
    *,
    base: str,
    scope: Scope,
    node: Filter,
    suffix: str,
    after_id: int = 0,
    rows: int = 500,
    limit: int | None = None,
) -> Page:
    """Entries under ``base`` in ``scope`` that match ``node``, from row ``after_id`` on.

    Reads at most ``rows`` stored rows (the unit of work between two looks at a time limit
    or an abandon), and returns at most ``limit`` matches. ``suffix`` is the directory's
    root DN. DirectoryEntryNotFound when the base does not exist (an empty base of a scope
    base search is the caller's rootDSE, not this).
    """
    base_norm = dnlib.normalise(base)
    suffix_norm = dnlib.normalise(suffix)
    with instance.engine.connect() as connection:
        generation = _state(connection, directory_id)
        params: dict[str, Any] = {"d": directory_id, "g": generation, "after": after_id}
        if scope == "base":
            # One row by its unique DN (no ordering: the planner would walk the ids instead).
            fetched = connection.execute(_BASE, {**params, "n": base_norm}).all()
            if (
                not fetched
                and after_id == 0
                and base_norm != suffix_norm
                and not _exists(connection, params, base_norm)
            ):
                raise objects.not_found(directory_id, base)
        else:
            if after_id == 0 and base_norm != suffix_norm and not _exists(connection, params, base_norm):
                raise objects.not_found(directory_id, base)
            single = _one_indexed(node)
            if single is not None:
                fetched = connection.execute(
                    _BY_VALUE, {**params, "a": single[0], "v": single[1], "rows": rows}
                ).all()
            else:
                fetched = connection.execute(
                    _general(instance, directory_id, generation, base_norm, suffix_norm, scope, node,
                             after_id, rows)
                ).all()  # fmt: skip
    found: list[tuple[int, Entry]] = []
    last = after_id
    for row_id, dn, dn_norm, classes, attributes in fetched:
        if limit is not None and len(found) >= limit:
            return Page(found, last, False)
        last = row_id
        if not _in_scope(dn_norm, base_norm, scope):
            continue
        entry = objects.stored_entry(dn, classes, attributes)
        if matches(node, entry):
            found.append((row_id, entry))
    return Page(found, last, scope == "base" or len(fetched) < rows)


def _exists(connection: Connection, params: dict[str, Any], dn_norm: str) -> bool:
    found = connection.execute(_EXISTS, {"d": params["d"], "g": params["g"], "n": dn_norm}).first()
    return found is not None


def _general(
    instance: Instance,
    directory_id: str,
    generation: int,
    base_norm: str,
    suffix_norm: str,
    scope: Scope,
    node: Filter,
    after_id: int,
    rows: int,
) -> Select[int, str, str, str, str]:
    """Any other search: the scope by ``dn_norm``, the index or the text hint, in id order."""
    query = (
        select(*_COLUMNS)
        .where(
            DirectoryObject.directory_id == directory_id,
            DirectoryObject.generation == generation,
            DirectoryObject.id > after_id,
            _scope(base_norm, scope, suffix_norm),
        )
        .order_by(DirectoryObject.id)
        .limit(rows)
    )
    indexed = _indexed(node, directory_id, generation)
    hint = _hint(node, instance.engine.dialect.name == "postgresql") if indexed is None else None
    for condition in (indexed, hint):
        if condition is not None:
            query = query.where(condition)
    return query
