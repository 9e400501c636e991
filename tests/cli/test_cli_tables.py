"""Tables never cut an identifier, at 80 columns or narrower (issue 17, item 10): every id a
list shows can be copied into the next command."""

from __future__ import annotations

from ams import audit
from ams.directory import directories, snapshots
from ams.instance import Instance
from ams.vault import devices
from conftest import run_ams


def _listed(instance: Instance) -> dict[tuple[str, ...], list[str]]:
    """Devices (the populated home has three), directories, a snapshot, audit events: each
    list command with the identifiers it must show whole."""
    made = [
        directories.create(instance, dns_name=name, short_name=None, actor="test")
        for name in ("corp.example.com", "branch-office.internal.example.org")
    ]
    snapshot = snapshots.create(instance, made[0].id, name="before upgrade", actor="test")
    with instance.session() as session:
        events = audit.list_events(session, limit=1000)
    return {
        ("directory", "list"): [d.id for d in made],
        ("snapshot", "list"): [snapshot.id, snapshot.directory_id],
        ("device", "list"): [x for d in devices.list_devices(instance) for x in (d.id, d.name)],
        ("audit", "list"): [x for e in events for x in (e.actor, e.target) if x],
    }


def test_identifiers_are_whole_at_any_width(populated: Instance) -> None:
    home = populated.home.root
    for command, identifiers in _listed(populated).items():
        assert identifiers, command
        for width in ("80", "40"):
            shown = run_ams(*command, home=home, env={"COLUMNS": width})
            assert shown.returncode == 0, shown.stderr
            assert "…" not in shown.stdout, (command, width, shown.stdout)
            words = set(shown.stdout.split())
            assert [i for i in identifiers if i not in words] == [], (command, width, shown.stdout)
            if width == "80" and command != ("audit", "list"):
                # At 80 columns these still fit as a table: the other columns give way.
                assert max(len(line) for line in shown.stdout.splitlines()) <= 80, shown.stdout
                assert "───" in shown.stdout
