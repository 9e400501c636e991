"""End to end: a real `ams serve` restores in its background worker; the real `ams` command
restores in-process when no service runs, finishes a crashed restore, and exits with the
documented statuses."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from ams import apikeys
from ams.apikeys import Role
from ams.db.models.directory import DirectoryRestore
from ams.directory import directories, objects, snapshots
from ams.directory.entry import Entry
from ams.home import Home
from ams.instance import create_instance, open_instance
from conftest import RECOVERY_PASSWORD, run_ams
from server import Server

BASE = "dc=corp,dc=example,dc=com"


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[Home, str, str]:
    """An instance with a directory of 31 entries and an admin API key token."""
    home = Home(tmp_path / "home")
    create_instance(home, recovery_password=RECOVERY_PASSWORD, actor="test")
    instance = open_instance(home)
    try:
        token = apikeys.create(instance, "admin", Role.ADMIN, "test").token
        d = directories.create(
            instance,
            dns_name="corp.example.com",
            short_name="CORP",
            edition="Enterprise",
            additional_regions=["eu-west-1"],
            actor="test",
        ).id
        entries = [Entry(BASE, ["domain"], {"dc": ["corp"]})]
        entries += [Entry(f"cn=u{i},{BASE}", ["person"], {"cn": [f"u{i}"], "sn": ["x"]}) for i in range(30)]
        objects.import_entries(instance, d, entries, actor="test")
    finally:
        instance.close()
    return home, d, token


def test_serve_restores_in_the_background(prepared: tuple[Home, str, str]) -> None:
    home, d, token = prepared
    with Server(home.root) as server, server.client(token) as http:
        made = http.post(f"/api/v1/directories/{d}/snapshots", json={"name": "e2e"})
        assert made.status_code == 201, made.text
        sid = made.json()["id"]
        later = {"dn": f"cn=later,{BASE}", "object_classes": ["person"], "attributes": {"cn": "later"}}
        assert http.post(f"/api/v1/directories/{d}/objects", json=later).status_code == 201

        started = http.post(f"/api/v1/snapshots/{sid}/restore")
        assert started.status_code == 202
        assert started.json()["stage"] == "Restoring"
        stages = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            stage = http.get(f"/api/v1/directories/{d}").json()["stage"]
            stages.append(stage)
            if stage != "Restoring":
                break
            time.sleep(0.1)
        assert stages[-1] == "Active", stages
        shown = http.get(f"/api/v1/directories/{d}").json()
        assert shown["entry_count"] == 31
        assert all(r["in_sync"] and r["status"] == "Active" for r in shown["regions"])
        replica = http.get(f"/api/v1/directories/{d}/objects", params={"region": "eu-west-1"}).json()
        assert f"cn=later,{BASE}" not in [e["dn"] for e in replica] and len(replica) == 31
        # Outside the primary region, snapshot operations are refused.
        wrong = http.post(f"/api/v1/directories/{d}/snapshots", params={"region": "eu-west-1"})
        assert wrong.status_code == 409 and wrong.json()["error"] == "not_primary_region"
    assert server.proc.returncode == 0


def test_cli_restores_in_process_and_finishes_a_crashed_restore(prepared: tuple[Home, str, str]) -> None:
    home, d, _token = prepared
    made = run_ams("snapshot", "create", d, "--name", "cli", "--json", home=home.root)
    assert made.returncode == 0, made.stderr
    sid = json.loads(made.stdout)["id"]

    instance = open_instance(home)
    try:
        objects.add(instance, d, Entry(f"cn=later,{BASE}", ["person"], {"cn": ["later"]}), actor="t")
    finally:
        instance.close()
    restored = run_ams("snapshot", "restore", sid, home=home.root)
    assert restored.returncode == 0, restored.stderr
    assert "does it before it exits" in restored.stdout
    assert f"Directory {d} is Active with the 31 entries" in restored.stdout

    # A process dies half-way through a restore (os._exit: no clean-up of any kind); the
    # journal is left behind in `loading`, with part of the snapshot staged.
    instance = open_instance(home)
    try:
        objects.add(instance, d, Entry(f"cn=later,{BASE}", ["person"], {"cn": ["later"]}), actor="t")
        snapshots.restore(instance, sid, actor="t")
    finally:
        instance.close()
    script = (
        "import os, sys\n"
        "from ams.home import Home\n"
        "from ams.instance import open_instance\n"
        "from ams.directory import restore\n"
        "restore._BATCH = 10\n"
        "def crash(stage, count):\n"
        "    if count >= 20:\n"
        "        os._exit(9)\n"
        "restore.run_pending(open_instance(Home(__import__('pathlib').Path(sys.argv[1]))), hook=crash)\n"
    )
    died = subprocess.run([sys.executable, "-c", script, str(home.root)], capture_output=True, text=True)
    assert died.returncode == 9, died.stderr
    instance = open_instance(home)
    try:
        assert directories.get(instance, d).stage == "Restoring"
        with instance.session() as session:
            assert session.scalars(
                select(DirectoryRestore.state).order_by(DirectoryRestore.id.desc())
            ).first() == ("loading")
    finally:
        instance.close()
    shown = run_ams("directory", "show", d, "--json", home=home.root)
    assert shown.returncode == 0, shown.stderr
    assert f"a waiting restore of {sid} into {d} finished" in shown.stderr
    info = json.loads(shown.stdout)
    assert info["stage"] == "Active" and info["entry_count"] == 31

    # Exit statuses: four more manual snapshots fill the limit; the sixth is refused.
    instance = open_instance(home)
    try:
        for _ in range(4):
            snapshots.create(instance, d, actor="t")
    finally:
        instance.close()
    sixth = run_ams("snapshot", "create", d, home=home.root)
    assert sixth.returncode == 67
    assert sixth.stderr.startswith(f"error: directory {d} has 5 manual snapshots")
    limits = run_ams("snapshot", "limits", d, "--json", home=home.root)
    assert json.loads(limits.stdout) == {
        "manual_limit": 5,
        "manual_count": 5,
        "manual_limit_reached": True,
        "snapshots_supported": True,
        "unsupported_reason": None,
    }


def test_cli_too_old_snapshot_and_ad_connector(prepared: tuple[Home, str, str]) -> None:
    home, d, _token = prepared
    instance = open_instance(home)
    try:
        sid = snapshots.create(instance, d, actor="t").id
    finally:
        instance.close()
    later = {"AMS_CLOCK_OFFSET_SECONDS": str(181 * 86400)}
    old = run_ams("snapshot", "restore", sid, home=home.root, env=later)
    assert old.returncode == 70
    assert "older than 180 days" in old.stderr and "Traceback" not in old.stderr
    connector = run_ams(
        "directory", "create", "onprem.example.com", "--type", "ADConnector", "--json", home=home.root
    )
    cid = json.loads(connector.stdout)["id"]
    refused = run_ams("snapshot", "create", cid, home=home.root)
    assert refused.returncode == 69 and "AD Connector" in refused.stderr
