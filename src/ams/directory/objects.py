"""Entries of a directory, by DN: add, read, list, modify, delete, bulk import, export order.

DNs are unique without regard to case (``dn_norm``). Every call refuses while the
directory restores (:class:`~ams.errors.DirectoryUnavailable`, 503). Reads name a region
(None: the primary); a replica serves the generation it has converged on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any, cast

from sqlalchemy import Table, func, insert, select
from sqlalchemy.orm import Session

from ams import audit
from ams.db.models.directory import Directory, DirectoryObject, DirectoryRegion
from ams.directory import directories, valueindex
from ams.directory import dn as dnlib
from ams.directory.entry import (
    Entry,
    Value,
    check_attribute_name,
    decode_values,
    encode_values,
    readable,
    text_or_bytes,
)
from ams.errors import (
    AlreadyExists,
    BadInput,
    Conflict,
    DirectoryAttributeAbsent,
    DirectoryEntryNotFound,
    DirectoryValueExists,
)
from ams.instance import Instance
from ams.textcheck import check_name, check_text

__all__ = [
    "add",
    "apply_changes",
    "delete",
    "exists",
    "get",
    "import_entries",
    "iter_entries",
    "list_entries",
    "matched_dn",
    "modify",
    "not_found",
    "open_directory",
    "rename",
    "stored_entry",
]

_BATCH = 5000


def _generation(session: Session, directory: Directory, region: str | None) -> int:
    if region is None or region == directory.region:
        return directory.generation
    row = session.get(DirectoryRegion, (directory.id, region))
    if row is None:
        raise BadInput(
            f"directory {directory.id} has no replica in {region}: its regions are shown by "
            f"`ams directory show {directory.id}`"
        )
    return row.data_generation


def _open(session: Session, directory_id: str, *, write: bool = False) -> Directory:
    row = directories.load(session, directory_id, for_update=write)
    directories.refuse_while_restoring(row)
    return row


def open_directory(session: Session, directory_id: str, *, write: bool = False) -> Directory:
    """The directory's row for reading its entries (DirectoryUnavailable while it restores)."""
    return _open(session, directory_id, write=write)


def exists(session: Session, directory_id: str, generation: int, dn_norm: str) -> bool:
    return _find(session, directory_id, generation, dn_norm) is not None


def stored_entry(dn: str, classes: str, attributes: str) -> Entry:
    return _stored_entry(dn, classes, attributes)


def not_found(directory_id: str, dn: str) -> DirectoryEntryNotFound:
    return _not_found(directory_id, dn)


def _stored_entry(dn: str, classes: str, attributes: str) -> Entry:
    """An entry as stored, readable whatever an older version let in (ams.directory.entry)."""
    return Entry(
        dn=readable(dn),
        object_classes=[readable(c) for c in json.loads(classes)],
        attributes=decode_values(attributes),
    )


def _row_entry(row: DirectoryObject) -> Entry:
    return _stored_entry(row.dn, row.object_classes, row.attributes)


def _find(session: Session, directory_id: str, generation: int, dn_norm: str) -> DirectoryObject | None:
    return session.scalars(
        select(DirectoryObject).where(
            DirectoryObject.directory_id == directory_id,
            DirectoryObject.generation == generation,
            DirectoryObject.dn_norm == dn_norm,
        )
    ).one_or_none()


def _under(norm: str) -> Any:
    """Entries below ``norm`` (any depth)."""
    escaped = norm.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return DirectoryObject.dn_norm.like("%," + escaped, escape="\\")


def _not_found(directory_id: str, dn: str) -> DirectoryEntryNotFound:
    return DirectoryEntryNotFound(
        f"directory {directory_id} has no entry {dn!r}: list its entries with GET "
        f"/api/v1/directories/{directory_id}/objects or `ams directory export {directory_id}`"
    )


def _check_value(name: str, value: Value) -> Value:
    """Text values must be text (ams.textcheck); bytes may hold anything."""
    if isinstance(value, bytes):
        return value
    try:
        return check_text(value, f"a value of attribute {name}")
    except BadInput as exc:
        raise BadInput(
            f'{exc.message}; nothing was changed (binary data goes base64-encoded: {{"base64": "..."}} '
            f"in JSON, {name}:: in LDIF)"
        ) from None


def _clean(entry: Entry, *, stored: bool = False) -> Entry:
    """Validate and tidy an entry: objectClass out of the attributes, names and text checked,
    no empties. Every write passes here, so nothing is stored that a read cannot return.

    ``stored``: the entry merges what is stored with a change whose new values were checked
    already (:func:`_check_change`); what an older version stored is kept as it reads.
    """
    if not isinstance(entry.dn, str) or not entry.dn.strip():
        raise BadInput("an entry needs a DN, like cn=alice,ou=people,dc=example,dc=com")
    if not stored:
        check_text(entry.dn, "the DN")
    classes = [c for c in entry.object_classes if not isinstance(c, str) or c.strip()]
    attributes: dict[str, list[Value]] = {}
    seen: dict[str, str] = {}
    for name, values in entry.attributes.items():
        check_attribute_name(name)
        if name.lower() == "objectclass":
            classes.extend(c for c in map(_object_class, values) if c.strip())
            continue
        key = seen.setdefault(name.lower(), name)
        attributes.setdefault(key, []).extend(v if stored else _check_value(key, v) for v in values)
    if not stored:
        for c in classes:
            check_name(c, "an objectClass value")
    if not classes:
        raise BadInput(f"entry {entry.dn!r} has no objectClass: give at least one (e.g. top)")
    unique_classes = list(dict.fromkeys(classes))
    return Entry(dn=entry.dn.strip(), object_classes=unique_classes, attributes=attributes)


def _object_class(value: Value) -> str:
    text = text_or_bytes(value) if isinstance(value, bytes) else value
    if isinstance(text, bytes):
        raise BadInput("an objectClass value is binary: give object classes as text")
    return text


def _check_change(change: dict[str, list[Value]]) -> None:
    """The new values of a modify, checked as :func:`_clean` checks a new entry's."""
    for name, values in change.items():
        check_attribute_name(name)
        for v in values:
            if name.lower() == "objectclass":
                check_name(_object_class(v), "an objectClass value")
            else:
                _check_value(name, v)


def get(instance: Instance, directory_id: str, dn: str, *, region: str | None = None) -> Entry:
    norm = dnlib.normalise(dn)
    with instance.session() as session:
        directory = _open(session, directory_id)
        row = _find(session, directory_id, _generation(session, directory, region), norm)
        if row is None:
            raise _not_found(directory_id, dn)
        return _row_entry(row)


def list_entries(
    instance: Instance,
    directory_id: str,
    *,
    region: str | None = None,
    base: str | None = None,
    contains: str | None = None,
    limit: int = 1000,
    offset: int = 0,
) -> list[Entry]:
    """Entries in the order they were added; ``base`` keeps that DN and the entries under it,
    ``contains`` those whose DN holds that text (without regard to case)."""
    if not 1 <= limit <= 10000 or offset < 0:
        raise BadInput("limit must be 1 to 10000 and offset 0 or more")
    with instance.session() as session:
        directory = _open(session, directory_id)
        query = (
            select(DirectoryObject)
            .where(
                DirectoryObject.directory_id == directory_id,
                DirectoryObject.generation == _generation(session, directory, region),
            )
            .order_by(DirectoryObject.id)
        )
        if base is not None:
            norm = dnlib.normalise(base)
            query = query.where((DirectoryObject.dn_norm == norm) | _under(norm))
        if contains:
            text = check_text(contains, "the text to look for").lower()
            escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(DirectoryObject.dn_norm.like(f"%{escaped}%", escape="\\"))
        rows = session.scalars(query.offset(offset).limit(limit)).all()
        return [_row_entry(r) for r in rows]


def count(instance: Instance, directory_id: str) -> int:
    with instance.session() as session:
        directory = _open(session, directory_id)
        return int(
            session.scalar(
                select(func.count())
                .select_from(DirectoryObject)
                .where(
                    DirectoryObject.directory_id == directory_id,
                    DirectoryObject.generation == directory.generation,
                )
            )
            or 0
        )


def add(
    instance: Instance,
    directory_id: str,
    entry: Entry,
    *,
    actor: str,
    require_parent: str | None = None,
) -> Entry:
    """Add one entry; AlreadyExists when its DN (in any case) is taken.

    ``require_parent``: the directory's root DN, when the entry's parent must exist unless
    the entry is that root or above it (as an LDAP server requires; LDIF and REST let a
    tree arrive in any order)."""
    entry = _clean(entry)
    norm = dnlib.normalise(entry.dn)
    with instance.transaction() as session:
        directory = _open(session, directory_id, write=True)
        if _find(session, directory_id, directory.generation, norm) is not None:
            raise AlreadyExists(
                f"directory {directory_id} already has an entry {entry.dn!r}; nothing was changed"
            )
        parent = dnlib.parent(norm)
        if (
            require_parent is not None
            and parent is not None
            and norm != dnlib.normalise(require_parent)
            and not dnlib.normalise(require_parent).endswith(norm)
            and _find(session, directory_id, directory.generation, parent) is None
        ):
            raise DirectoryEntryNotFound(
                f"directory {directory_id} has no entry {parent!r} to add {entry.dn!r} under: "
                "add the parent first",
                matched_dn=_matched(session, directory_id, directory.generation, parent),
            )
        added = DirectoryObject(
            directory_id=directory_id,
            generation=directory.generation,
            dn=entry.dn,
            dn_norm=norm,
            object_classes=json.dumps(entry.object_classes),
            attributes=encode_values(entry.attributes),
        )
        session.add(added)
        session.flush()
        valueindex.index_object(session, added)
        audit.record(
            session,
            instance.clock,
            audit.Event.DIRECTORY_ENTRY_ADDED,
            actor=actor,
            target=directory_id,
            details={"dn": entry.dn},
        )
    return entry


def modify(
    instance: Instance,
    directory_id: str,
    dn: str,
    *,
    replace: dict[str, list[Value]] | None = None,
    add: dict[str, list[Value]] | None = None,
    delete: dict[str, list[Value]] | None = None,
    actor: str,
) -> Entry:
    """Change attributes as LDAP modify does: ``replace`` sets (an empty list removes),
    ``add`` appends values, ``delete`` removes the values given (all, when the list is empty)."""
    norm = dnlib.normalise(dn)
    _check_change(replace or {})
    _check_change(add or {})
    with instance.transaction() as session:
        directory = _open(session, directory_id, write=True)
        row = _find(session, directory_id, directory.generation, norm)
        if row is None:
            raise _not_found(directory_id, dn)
        current = _row_entry(row)
        attrs: dict[str, list[Value]] = {"objectClass": list(current.object_classes)}
        attrs.update({k: list(v) for k, v in current.attributes.items()})

        def key_of(name: str) -> str:
            check_attribute_name(name)
            for existing in attrs:
                if existing.lower() == name.lower():
                    return existing
            return name

        for name, values in (replace or {}).items():
            key = key_of(name)
            if values:
                attrs[key] = list(values)
            else:
                attrs.pop(key, None)
        for name, values in (add or {}).items():
            key = key_of(name)
            have = attrs.setdefault(key, [])
            have.extend(v for v in values if v not in have)
        for name, values in (delete or {}).items():
            key = key_of(name)
            if key not in attrs:
                raise BadInput(f"entry {dn!r} has no attribute {name}: nothing was changed")
            if values:
                attrs[key] = [v for v in attrs[key] if v not in values]
            if not values or not attrs[key]:
                del attrs[key]
        return _write_modified(instance, session, directory_id, row, attrs, actor)


def _write_modified(
    instance: Instance,
    session: Session,
    directory_id: str,
    row: DirectoryObject,
    attrs: dict[str, list[Value]],
    actor: str,
) -> Entry:
    """Store a modified entry's attributes (checked as stored ones are), index them and
    audit the change, inside the caller's transaction; the entry as stored."""
    classes = attrs.pop("objectClass", [])
    merged = Entry(dn=row.dn, object_classes=[], attributes={"objectClass": classes, **attrs})
    updated = _clean(merged, stored=True)
    row.object_classes = json.dumps(updated.object_classes)
    row.attributes = encode_values(updated.attributes)
    session.flush()
    valueindex.index_object(session, row)
    audit.record(
        session,
        instance.clock,
        audit.Event.DIRECTORY_ENTRY_MODIFIED,
        actor=actor,
        target=directory_id,
        details={"dn": row.dn},
    )
    return updated


def _same(a: Value, b: Value) -> bool:
    """Values compare without regard to case, as the directory's usual attributes do."""
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    return a == b


def apply_changes(
    instance: Instance,
    directory_id: str,
    dn: str,
    changes: list[tuple[str, str, list[Value]]],
    *,
    actor: str,
) -> Entry:
    """An LDAP modify: ``(op, attribute, values)`` with op add, delete or replace, applied in
    order, all or none. Adding a value the attribute has is DirectoryValueExists; deleting a
    value or attribute it lacks is DirectoryAttributeAbsent."""
    norm = dnlib.normalise(dn)
    for op, name, values in changes:
        if op not in ("add", "delete", "replace"):
            raise BadInput(f"{op!r} is not a change: use add, delete or replace")
        if op != "delete":
            _check_change({name: values})
        else:
            check_attribute_name(name)
    with instance.transaction() as session:
        directory = _open(session, directory_id, write=True)
        row = _find(session, directory_id, directory.generation, norm)
        if row is None:
            raise DirectoryEntryNotFound(
                _not_found(directory_id, dn).message,
                matched_dn=_matched(session, directory_id, directory.generation, dnlib.parent(norm)),
            )
        current = _row_entry(row)
        attrs: dict[str, list[Value]] = {"objectClass": list(current.object_classes)}
        attrs.update({k: list(v) for k, v in current.attributes.items()})

        def key_of(name: str) -> str:
            base = name.lower()
            return next((k for k in attrs if k.lower() == base), name)

        for op, name, values in changes:
            key = key_of(name)
            if op == "replace":
                if values:
                    attrs[key] = list(dict.fromkeys(values))
                else:
                    attrs.pop(key, None)
            elif op == "add":
                have = attrs.setdefault(key, [])
                for i, value in enumerate(values):
                    if any(_same(value, v) for v in have):
                        raise DirectoryValueExists(f"modify/add: {name}: value #{i} already exists")
                    have.append(value)
                if not have:
                    del attrs[key]
            else:
                if key not in attrs:
                    raise DirectoryAttributeAbsent(f"modify/delete: {name}: no such attribute")
                for value in values:
                    if not any(_same(value, v) for v in attrs[key]):
                        raise DirectoryAttributeAbsent(f"modify/delete: {name}: no such value")
                    attrs[key] = [v for v in attrs[key] if not _same(value, v)]
                if not values or not attrs[key]:
                    del attrs[key]
        return _write_modified(instance, session, directory_id, row, attrs, actor)


def _matched(session: Session, directory_id: str, generation: int, norm: str | None) -> str:
    """The DN of the nearest existing entry at or above ``norm`` ("" when none)."""
    while norm:
        row = _find(session, directory_id, generation, norm)
        if row is not None:
            return row.dn
        norm = dnlib.parent(norm)
    return ""


def matched_dn(instance: Instance, directory_id: str, dn: str) -> str:
    """The nearest existing entry above ``dn`` (LDAP's matchedDN of a noSuchObject)."""
    with instance.session() as session:
        directory = _open(session, directory_id)
        return _matched(session, directory_id, directory.generation, dnlib.parent(dnlib.normalise(dn)))


def _rdn_pairs(rdn: str) -> list[tuple[str, str]]:
    """``cn=A+sn=B`` -> [("cn", "A"), ("sn", "B")], values unescaped as LDAP writes them."""
    out = []
    for ava in rdn.split("+"):
        name, sep, value = ava.partition("=")
        if not sep or not name.strip():
            raise BadInput(f"{rdn!r} is not a valid RDN: write it as attribute=value")
        out.append((check_attribute_name(name.strip()), _unescape(value.strip())))
    return out


def _unescape(value: str) -> str:
    def one(match: Any) -> str:
        text: str = match.group(1)
        return bytes.fromhex(text).decode("utf-8", "replace") if len(text) == 2 else text

    return re.sub(r"\\([0-9A-Fa-f]{2}|.)", one, value)


def rename(
    instance: Instance,
    directory_id: str,
    dn: str,
    new_rdn: str,
    *,
    delete_old_rdn: bool,
    new_superior: str | None = None,
    actor: str,
) -> Entry:
    """Rename an entry (LDAP modifyDN), and move it under ``new_superior`` when given; the
    entries under it move with it. The new RDN's values are added to the entry's
    attributes; ``delete_old_rdn`` removes the old RDN's values."""
    norm = dnlib.normalise(dn)
    check_text(new_rdn, "the new RDN")
    if "," in dnlib.rdns(new_rdn)[0] or len(dnlib.rdns(new_rdn)) != 1:
        raise BadInput(f"{new_rdn!r} is not one RDN: give attribute=value without a comma")
    new_pairs = _rdn_pairs(new_rdn)
    with instance.transaction() as session:
        directory = _open(session, directory_id, write=True)
        generation = directory.generation
        row = _find(session, directory_id, generation, norm)
        if row is None:
            raise DirectoryEntryNotFound(
                _not_found(directory_id, dn).message,
                matched_dn=_matched(session, directory_id, generation, dnlib.parent(norm)),
            )
        old_parts = dnlib.rdns(row.dn)
        if new_superior is not None:
            parent_norm: str | None = dnlib.normalise(new_superior)
            parent_dn = new_superior.strip()
            if parent_norm == norm or (parent_norm or "").endswith("," + norm):
                raise BadInput(f"cannot move {dn!r} under itself: choose a newSuperior outside it")
            if _find(session, directory_id, generation, parent_norm or "") is None:
                raise DirectoryEntryNotFound(
                    f"directory {directory_id} has no entry {new_superior!r} to move {dn!r} under",
                    matched_dn=_matched(session, directory_id, generation, parent_norm),
                )
        else:
            parent_dn = ",".join(old_parts[1:])
        new_dn = new_rdn.strip() + ("," + parent_dn if parent_dn else "")
        new_norm = dnlib.normalise(new_dn)
        if new_norm != norm and _find(session, directory_id, generation, new_norm) is not None:
            raise AlreadyExists(
                f"directory {directory_id} already has an entry {new_dn!r}; nothing was changed"
            )
        current = _row_entry(row)
        attrs: dict[str, list[Value]] = {k: list(v) for k, v in current.attributes.items()}

        spelled = {k.lower(): k for k in attrs}

        def key_of(name: str) -> str:
            return next((k for k in attrs if k.lower() == name.lower()), spelled.get(name.lower(), name))

        if delete_old_rdn:
            for name, value in _rdn_pairs(old_parts[0]):
                key = key_of(name)
                kept = [
                    v for v in attrs.get(key, []) if not (isinstance(v, str) and v.lower() == value.lower())
                ]
                if kept:
                    attrs[key] = kept
                else:
                    attrs.pop(key, None)
        for name, value in new_pairs:
            key = key_of(name)
            have = attrs.setdefault(key, [])
            if not any(isinstance(v, str) and v.lower() == value.lower() for v in have):
                have.append(value)
        updated = _clean(
            Entry(dn=new_dn, object_classes=current.object_classes, attributes=attrs), stored=True
        )
        children = session.scalars(
            select(DirectoryObject).where(
                DirectoryObject.directory_id == directory_id,
                DirectoryObject.generation == generation,
                _under(norm),
            )
        ).all()
        depth = len(old_parts)
        for child in children:
            parts = dnlib.rdns(child.dn)
            child.dn = ",".join([*parts[: len(parts) - depth], updated.dn])
            child.dn_norm = dnlib.normalise(child.dn)
        row.dn = updated.dn
        row.dn_norm = new_norm
        row.attributes = encode_values(updated.attributes)
        session.flush()
        valueindex.index_object(session, row)
        audit.record(
            session,
            instance.clock,
            audit.Event.DIRECTORY_ENTRY_RENAMED,
            actor=actor,
            target=directory_id,
            details={"dn": dn, "new_dn": updated.dn, "moved": len(children)},
        )
        return updated


def delete(instance: Instance, directory_id: str, dn: str, *, actor: str) -> Entry:
    """Delete a leaf entry; an entry with entries under it is refused, as LDAP does."""
    norm = dnlib.normalise(dn)
    with instance.transaction() as session:
        directory = _open(session, directory_id, write=True)
        row = _find(session, directory_id, directory.generation, norm)
        if row is None:
            raise _not_found(directory_id, dn)
        child = session.scalar(
            select(DirectoryObject.id)
            .where(
                DirectoryObject.directory_id == directory_id,
                DirectoryObject.generation == directory.generation,
                _under(norm),
            )
            .limit(1)
        )
        if child is not None:
            raise Conflict(f"entry {dn!r} has entries under it: delete those first")
        gone = _row_entry(row)
        valueindex.drop_objects(session, [row.id])
        session.delete(row)
        audit.record(
            session,
            instance.clock,
            audit.Event.DIRECTORY_ENTRY_DELETED,
            actor=actor,
            target=directory_id,
            details={"dn": row.dn},
        )
        return gone


def import_entries(instance: Instance, directory_id: str, entries: Iterable[Entry], *, actor: str) -> int:
    """Add many entries in one transaction: all of them, or (on any error) none."""
    with instance.transaction() as session:
        directory = _open(session, directory_id, write=True)
        generation = directory.generation
        first_new = session.scalar(select(func.max(DirectoryObject.id))) or 0
        existing = set(
            session.scalars(
                select(DirectoryObject.dn_norm).where(
                    DirectoryObject.directory_id == directory_id, DirectoryObject.generation == generation
                )
            ).all()
        )
        batch: list[dict[str, Any]] = []
        total = 0
        table = cast(Table, DirectoryObject.__table__)
        for raw in entries:
            entry = _clean(raw)
            norm = dnlib.normalise(entry.dn)
            if norm in existing:
                raise AlreadyExists(
                    f"directory {directory_id} already has an entry {entry.dn!r} (or the input holds "
                    "it twice); nothing was imported"
                )
            existing.add(norm)
            batch.append(
                {
                    "directory_id": directory_id,
                    "generation": generation,
                    "dn": entry.dn,
                    "dn_norm": norm,
                    "object_classes": json.dumps(entry.object_classes),
                    "attributes": encode_values(entry.attributes),
                }
            )
            if len(batch) >= _BATCH:
                session.execute(insert(table), batch)
                total += len(batch)
                batch = []
        if batch:
            session.execute(insert(table), batch)
            total += len(batch)
        valueindex.index_generation(session, directory_id, generation, after_id=first_new)
        audit.record(
            session,
            instance.clock,
            audit.Event.DIRECTORY_IMPORTED,
            actor=actor,
            target=directory_id,
            details={"count": total},
        )
    return total


def iter_entries(instance: Instance, directory_id: str, *, region: str | None = None) -> Iterator[Entry]:
    """Every entry, parents before children (by depth, then the order they were added), read
    at one point in time: the order ``slapadd`` needs."""
    with instance.session() as session:
        directory = _open(session, directory_id)
        generation = _generation(session, directory, region)
        rows = session.execute(
            select(DirectoryObject.dn, DirectoryObject.object_classes, DirectoryObject.attributes)
            .where(DirectoryObject.directory_id == directory_id, DirectoryObject.generation == generation)
            .order_by(DirectoryObject.id)
        ).all()
    keyed = sorted(((dnlib.depth(r[0]), i) for i, r in enumerate(rows)))
    for _depth, i in keyed:
        yield _stored_entry(*rows[i])
