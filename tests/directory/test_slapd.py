"""OpenLDAP's own tools against our LDIF: slapcat output imports, our export loads into slapadd.

A throwaway slapd configuration (mdb backend, suffix dc=example,dc=com) in a temporary
folder, used offline by `slapadd -f` / `slapcat -f`: no daemon ever runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ams.directory import ldif
from ams.directory.entry import Entry
from ams.home import Home
from ams.instance import create_instance
from conftest import RECOVERY_PASSWORD, run_ams

SUFFIX = "dc=example,dc=com"
SCHEMAS = ("core", "cosine", "inetorgperson", "nis")


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/local/sbin"):
        candidate = Path(folder) / name
        if candidate.is_file():
            return str(candidate)
    return None


SLAPADD = _tool("slapadd")
SLAPCAT = _tool("slapcat")

if SLAPADD is None or SLAPCAT is None:
    if os.environ.get("CI"):
        raise RuntimeError("slapadd/slapcat are missing in CI: .ci/run installs the Debian package slapd")
    pytest.skip(
        "OpenLDAP's slapadd/slapcat are not installed (Debian package slapd; .ci/run installs it)",
        allow_module_level=True,
    )


def slapd_config(folder: Path) -> Path:
    folder.mkdir()
    (folder / "db").mkdir()
    conf = folder / "slapd.conf"
    lines = [f"include /etc/ldap/schema/{s}.schema" for s in SCHEMAS]
    lines += [
        "modulepath /usr/lib/ldap",
        "moduleload back_mdb",
        f"pidfile {folder}/slapd.pid",
        "database mdb",
        "maxsize 268435456",
        f'suffix "{SUFFIX}"',
        f'rootdn "cn=admin,{SUFFIX}"',
        f"directory {folder}/db",
    ]
    conf.write_text("\n".join(lines) + "\n")
    return conf


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{argv[0]} failed: {proc.stderr}"
    return proc


def generated(users: int = 200, computers: int = 60, groups: int = 12) -> list[Entry]:
    """An AD-like tree: OUs, users (some with non-ASCII names and photos), computers, groups."""
    out = [
        Entry(SUFFIX, ["top", "dcObject", "organization"], {"dc": ["example"], "o": ["Example Corp"]}),
    ]
    for ou in ("People", "Computers", "Groups"):
        out.append(Entry(f"ou={ou},{SUFFIX}", ["top", "organizationalUnit"], {"ou": [ou]}))
    for i in range(users):
        name = f"Zoë Ångström {i}" if i % 10 == 0 else f"User {i}"
        attrs: dict[str, list[str | bytes]] = {
            "uid": [f"user{i}"],
            "cn": [name],
            "sn": [f"Surname{i}"],
            "mail": [f"user{i}@example.com"],
            "description": ["a long description that needs folding " * 4],
        }
        if i % 25 == 0:
            attrs["jpegPhoto"] = [bytes(range(256)) * 2]
        out.append(Entry(f"uid=user{i},ou=People,{SUFFIX}", ["top", "inetOrgPerson"], attrs))
    for i in range(computers):
        out.append(
            Entry(
                f"cn=WS{i:04d},ou=Computers,{SUFFIX}",
                ["top", "device"],
                {"cn": [f"WS{i:04d}"], "serialNumber": [f"SN-{i}"]},
            )
        )
    for g in range(groups):
        members = [f"uid=user{i},ou=People,{SUFFIX}" for i in range(g, users, groups)]
        out.append(
            Entry(
                f"cn=group{g},ou=Groups,{SUFFIX}",
                ["top", "groupOfNames"],
                {"cn": [f"group{g}"], "member": members},
            )
        )
    return out


def by_dn(entries: list[Entry]) -> dict[str, Entry]:
    return {e.dn.lower(): e for e in entries}


def test_slapcat_output_imports_and_our_export_loads_into_slapadd(tmp_path: Path) -> None:
    source = generated()
    first = slapd_config(tmp_path / "ldap1")
    (tmp_path / "generated.ldif").write_text(ldif.dump(source, version=False))
    run(SLAPADD, "-q", "-f", str(first), "-l", str(tmp_path / "generated.ldif"))  # type: ignore[arg-type]
    run(SLAPCAT, "-f", str(first), "-l", str(tmp_path / "slapcat.ldif"))  # type: ignore[arg-type]
    slapcat_text = (tmp_path / "slapcat.ldif").read_bytes()
    assert b"\n " in slapcat_text and b":: " in slapcat_text  # folded lines and base64 values

    home = Home(tmp_path / "ams")
    create_instance(home, recovery_password=RECOVERY_PASSWORD, actor="test")
    created = run_ams(
        "directory", "create", "example.com", "--short-name", "EXAMPLE", "--json", home=home.root
    )
    assert created.returncode == 0, created.stderr
    directory_id = json.loads(created.stdout)["id"]
    imported = run_ams("directory", "import", directory_id, str(tmp_path / "slapcat.ldif"), home=home.root)
    assert imported.returncode == 0, imported.stderr
    assert f"Imported {len(source)} entries" in imported.stdout
    exported = run_ams(
        "directory", "export", directory_id, "--out", str(tmp_path / "export.ldif"), home=home.root
    )
    assert exported.returncode == 0, exported.stderr

    second = slapd_config(tmp_path / "ldap2")
    run(SLAPADD, "-f", str(second), "-l", str(tmp_path / "export.ldif"))  # type: ignore[arg-type]
    run(SLAPCAT, "-f", str(second), "-l", str(tmp_path / "slapcat2.ldif"))  # type: ignore[arg-type]

    original = by_dn(list(ldif.parse(slapcat_text)))
    round_trip = by_dn(list(ldif.parse((tmp_path / "slapcat2.ldif").read_bytes())))
    assert len(original) == len(round_trip) == len(source)
    assert set(original) == set(round_trip)
    for dn in (
        f"uid=user0,ou=people,{SUFFIX}",
        f"uid=user25,ou=people,{SUFFIX}",
        f"cn=ws0007,ou=computers,{SUFFIX}",
        f"cn=group3,ou=groups,{SUFFIX}",
    ):
        a, b = original[dn], round_trip[dn]
        for name in (
            "cn",
            "jpegPhoto",
            "member",
            "description",
            "serialNumber",
            "entryUUID",
            "createTimestamp",
        ):
            assert a.get(name) == b.get(name), (dn, name)
    assert round_trip[f"uid=user0,ou=people,{SUFFIX}"].get("cn") == ["Zoë Ångström 0"]
    assert round_trip[f"uid=user25,ou=people,{SUFFIX}"].get("jpegPhoto") == [bytes(range(256)) * 2]
    assert len(round_trip[f"cn=group3,ou=groups,{SUFFIX}"].get("member")) == len(range(3, 200, 12))
    # Our export is valid LDIF by our own reader too, and every line is folded at 76.
    assert all(len(line) <= 76 for line in (tmp_path / "export.ldif").read_text().splitlines())

    # A bad file imports nothing, says which line, and exits with the LDIF error status.
    bad = tmp_path / "bad.ldif"
    bad.write_text(
        f"dn: cn=new,{SUFFIX}\nobjectClass: device\ncn: new\n\ndn: cn=x,{SUFFIX}\nchangetype: delete\n"
    )
    refused = run_ams("directory", "import", directory_id, str(bad), home=home.root)
    assert refused.returncode == 73
    assert refused.stderr.startswith("error: LDIF line 6: change records")
    assert "Traceback" not in refused.stderr
    shown = run_ams("directory", "show", directory_id, "--json", home=home.root)
    assert json.loads(shown.stdout)["entry_count"] == len(source)
