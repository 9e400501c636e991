"""ams.directory.search and its equality index (valueindex), in-process: the exact matching
rules, the SQL narrowing never losing a match, and the index following every kind of write
(add, LDAP modify, rename, delete, import, snapshot restore, directory deletion)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from ams.db.models.directory import DirectoryValue
from ams.directory import directories, objects, restore, snapshots
from ams.directory import search as s
from ams.directory.entry import Entry
from ams.instance import Instance

BASE = "DC=corp,DC=example,DC=com"


def _setup(instance: Instance) -> str:
    d = directories.create(instance, dns_name="corp.example.com", short_name="CORP", actor="t").id
    entries = [
        Entry(BASE, ["top", "domain"], {"dc": ["corp"]}),
        Entry(f"OU=People,{BASE}", ["organizationalUnit"], {"ou": ["People"]}),
        Entry(
            f"CN=Alice,OU=People,{BASE}", ["person"], {"cn": ["Alice"], "uid": ["alice"], "uidNumber": ["9"]}
        ),
        Entry(f"CN=Bob,OU=People,{BASE}", ["person"], {"cn": ["Bob"], "uid": ["bob"], "uidNumber": ["10"]}),
        Entry(
            f"CN=Staff,{BASE}",
            ["group"],
            {"cn": ["Staff"], "member": [f"cn=alice, ou=people, {BASE.lower()}"]},
        ),
        Entry(f"CN=Photo,{BASE}", ["person"], {"cn": ["Photo"], "uid": [b"\xff\x00bin"]}),
    ]
    objects.import_entries(instance, d, entries, actor="t")
    return d


def _find(instance: Instance, d: str, node: s.Filter, base: str = BASE, scope: s.Scope = "sub") -> set[str]:
    page = s.search_page(instance, d, base=base, scope=scope, node=node, suffix=BASE)
    assert page.done
    return {e.dn for _id, e in page.entries}


def test_matching_rules(instance: Instance) -> None:
    d = _setup(instance)
    alice, bob = f"CN=Alice,OU=People,{BASE}", f"CN=Bob,OU=People,{BASE}"
    assert _find(instance, d, s.Equal("UID", "ALICE")) == {alice}
    # Numbers order as numbers (9 < 10), not as text.
    assert _find(instance, d, s.Greater("uidNumber", "10")) == {bob}
    assert _find(instance, d, s.Less("uidNumber", "9")) == {alice}
    # A DN-valued attribute compares as a normalised DN.
    assert _find(instance, d, s.Equal("member", f"CN=Alice,OU=People,{BASE}")) == {f"CN=Staff,{BASE}"}
    assert _find(instance, d, s.Substrings("cn", "a", ("li",), "e")) == {alice}
    assert _find(instance, d, s.Substrings("cn", None, ("o",), None)) == {bob, f"CN=Photo,{BASE}"}
    assert _find(instance, d, s.And((s.Present("uid"), s.Not(s.Equal("cn", "bob"))))) == {
        alice,
        f"CN=Photo,{BASE}",
    }
    assert _find(instance, d, s.Or((s.Equal("uid", "bob"), s.Equal("cn", "staff")))) == {
        bob,
        f"CN=Staff,{BASE}",
    }
    assert _find(instance, d, s.Equal("uid", b"\xff\x00bin")) == {f"CN=Photo,{BASE}"}
    assert _find(instance, d, s.Undefined()) == set()
    assert _find(instance, d, s.Present("objectClass"), f"OU=People,{BASE}", "one") == {alice, bob}
    assert _find(instance, d, s.Present("objectClass"), alice, "base") == {alice}


def test_a_value_with_like_wildcards_is_matched_literally(instance: Instance) -> None:
    d = _setup(instance)
    dn = f"CN=Odd,{BASE}"
    objects.add(instance, d, Entry(dn, ["person"], {"cn": ["100%_done"], "sn": ['a"b\\c']}), actor="t")
    assert _find(instance, d, s.Equal("cn", "100%_done")) == {dn}
    assert _find(instance, d, s.Equal("cn", "100x_done")) == set()
    assert _find(instance, d, s.Substrings("cn", "100%", (), None)) == {dn}
    assert _find(instance, d, s.Equal("sn", 'A"B\\C')) == {dn}


def _indexed(instance: Instance, d: str) -> set[tuple[str, str]]:
    with instance.session() as session:
        rows = session.execute(
            select(DirectoryValue.attribute, DirectoryValue.value).where(DirectoryValue.directory_id == d)
        ).all()
    return {(a, v) for a, v in rows}


def test_the_index_follows_every_write(instance: Instance) -> None:
    d = _setup(instance)
    assert {("uid", "alice"), ("cn", "staff"), ("member", f"cn=alice,ou=people,{BASE.lower()}")} <= _indexed(
        instance, d
    )
    alice = f"CN=Alice,OU=People,{BASE}"
    objects.apply_changes(instance, d, alice, [("replace", "uid", ["alicia"])], actor="t")
    assert _find(instance, d, s.Equal("uid", "alicia")) == {alice}
    assert _find(instance, d, s.Equal("uid", "alice")) == set()
    objects.rename(instance, d, alice, "CN=Alicia", delete_old_rdn=True, actor="t")
    renamed = f"CN=Alicia,OU=People,{BASE}"
    assert _find(instance, d, s.Equal("cn", "alicia")) == {renamed}
    assert ("cn", "alice") not in _indexed(instance, d)
    snapshot = snapshots.create(instance, d, name="before", actor="t")
    objects.delete(instance, d, renamed, actor="t")
    assert _find(instance, d, s.Equal("uid", "alicia")) == set()
    objects.add(instance, d, Entry(f"CN=Carol,{BASE}", ["person"], {"uid": ["carol"]}), actor="t")

    snapshots.restore(instance, snapshot.id, actor="t")
    assert [r.state for r in restore.run_pending(instance)] == ["done"]
    assert _find(instance, d, s.Equal("uid", "alicia")) == {renamed}
    assert _find(instance, d, s.Equal("uid", "carol")) == set()
    with instance.session() as session:
        generations = session.scalars(
            select(func.count(func.distinct(DirectoryValue.generation))).where(
                DirectoryValue.directory_id == d
            )
        ).one()
    assert generations == 1  # the replaced generation's index went with its rows

    directories.delete(instance, d, actor="t")
    assert _indexed(instance, d) == set()


@pytest.mark.postgres
def test_the_same_on_postgresql(pg_instance: Instance) -> None:
    """ILIKE instead of SQLite's LIKE, the index written by a PostgreSQL restore."""
    test_matching_rules(pg_instance)
    directories.delete(pg_instance, directories.list_directories(pg_instance)[0].id, actor="t")
    test_a_value_with_like_wildcards_is_matched_literally(pg_instance)
    directories.delete(pg_instance, directories.list_directories(pg_instance)[0].id, actor="t")
    test_the_index_follows_every_write(pg_instance)
