"""The LDAP endpoint end to end: the real ldap-utils clients and ldap3 against a real
`ams serve --ldap-port` (plain, StartTLS and ldaps, with a certificate made by openssl).

One server for the module (its start costs seconds); each test works in its own subtree.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import ldap3
import pytest

from ams import apikeys, audit
from ams.apikeys import Role
from ams.audit import EventRecord
from ams.directory import directories, ldif, objects
from ams.directory.entry import Entry
from ams.home import Home
from ams.instance import create_instance, open_instance
from conftest import RECOVERY_PASSWORD, run_ams
from server import Server, free_port

DNS = "corp.example.com"
BASE = "DC=corp,DC=example,DC=com"
PASSWORD = "Corp-Admin-Passw0rd"
ADMIN = f"Admin@{DNS}"
BULK = 10_000
# Everything but the bulk entries (one of them kept): what a restore must bring back.
EXCEPT_BULK = "(|(!(sn=Bulk))(uid=b7))"

if shutil.which("ldapsearch") is None:
    if os.environ.get("CI"):
        raise RuntimeError("ldapsearch is missing in CI: .ci/run installs the Debian package ldap-utils")
    pytest.skip(
        "the ldap-utils clients are not installed (Debian package ldap-utils)", allow_module_level=True
    )


def _sbin(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/local/sbin") / name) if p.is_file()), None
    )


@dataclass
class Ldap:
    server: Server
    home: Path
    directory_id: str
    token: str
    port: int
    tls_port: int
    cert: Path

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    def tool(
        self, name: str, *args: str, input: str | None = None, bind: bool = True, password: str = PASSWORD,
        url: str | None = None, env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        argv = [name, "-x", "-H", url or self.url]
        if bind:
            argv += ["-D", ADMIN, "-w", password]
        full_env = {**os.environ, "LDAPTLS_CACERT": str(self.cert), **(env or {})}
        return subprocess.run(
            [*argv, *args], input=input, capture_output=True, text=True, timeout=120, env=full_env
        )

    def connection(self, user: str = ADMIN, password: str = PASSWORD) -> ldap3.Connection:
        server = ldap3.Server("127.0.0.1", port=self.port, get_info=ldap3.NONE)
        return ldap3.Connection(server, user=user, password=password, auto_bind=True, raise_exceptions=False)


def _people() -> list[Entry]:
    ou = f"OU=People,{BASE}"
    rows = [
        ("Alice Smith", "Smith", "alice", "1001", "Engineering"),
        ("Bob Jones", "Jones", "bob", "1002", "Engineering"),
        ("Carol Smithers", "Smithers", "carol", "1003", "Sales"),
        ("Dave Brown", "Brown", "dave", "2001", "Sales"),
        ("Zoë Ångström", "Ångström", "zoe", "2002", "Research"),
    ]
    out = [Entry(ou, ["top", "organizationalUnit"], {"ou": ["People"]})]
    for cn, sn, uid, number, dept in rows:
        out.append(
            Entry(
                f"CN={cn},{ou}",
                ["top", "person", "organizationalPerson", "inetOrgPerson"],
                {
                    "cn": [cn],
                    "sn": [sn],
                    "uid": [uid],
                    "employeeNumber": [number],
                    "departmentNumber": [dept],
                    "mail": [f"{uid}@{DNS}"],
                },
            )  # fmt: skip
        )
    return out


@pytest.fixture(scope="module")
def ldap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ldap]:
    folder = tmp_path_factory.mktemp("ldap")
    cert, key = folder / "cert.pem", folder / "key.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    home = Home(folder / "home")
    create_instance(home, recovery_password=RECOVERY_PASSWORD, actor="test")
    instance = open_instance(home)
    try:
        token = apikeys.create(instance, "admin", Role.ADMIN, "test").token
        d = directories.create(
            instance, dns_name=DNS, short_name="CORP", admin_password=PASSWORD, actor="t"
        ).id
        entries = [Entry(BASE, ["top", "domain"], {"dc": ["corp"]})]
        entries += _people()
        entries.append(Entry(f"OU=Bulk,{BASE}", ["top", "organizationalUnit"], {"ou": ["Bulk"]}))
        entries += [
            Entry(f"uid=b{i},OU=Bulk,{BASE}", ["top", "person", "organizationalPerson", "inetOrgPerson"],
                  {"uid": [f"b{i}"], "cn": [f"Bulk {i}"], "sn": ["Bulk"]})
            for i in range(BULK)
        ]  # fmt: skip
        objects.import_entries(instance, d, entries, actor="test")
    finally:
        instance.close()
    port, tls_port = free_port(), free_port()
    args = ["--ldap-port", str(port), "--ldaps-port", str(tls_port), "--ldap-tls-cert", str(cert),
            "--ldap-tls-key", str(key)]  # fmt: skip
    with Server(home.root, args=args) as server:
        yield Ldap(server, home.root, d, token, port, tls_port, cert)
    log = server.log.read_text()
    assert "Traceback" not in log, log


def _events(ldap: Ldap, event_id: int) -> list[EventRecord]:
    """The audit trail as the service wrote it (read in-process: an `ams` run costs seconds)."""
    instance = open_instance(Home(ldap.home))
    try:
        with instance.session() as session:
            return audit.list_events(session, event_id=event_id)
    finally:
        instance.close()


def _dns(output: str) -> list[str]:
    return [line[4:] for line in output.splitlines() if line.startswith("dn: ")]


def test_root_dse_is_anonymous_and_nothing_else_is(ldap: Ldap) -> None:
    found = ldap.tool("ldapsearch", "-LLL", "-s", "base", "-b", "", "+", bind=False)
    assert found.returncode == 0, found.stderr
    assert f"namingContexts: {BASE}" in found.stdout
    assert "supportedLDAPVersion: 3" in found.stdout
    assert "supportedControl: 1.2.840.113556.1.4.319" in found.stdout
    assert "supportedExtension: 1.3.6.1.4.1.1466.20037" in found.stdout
    refused = ldap.tool("ldapsearch", "-LLL", "-b", BASE, "(uid=alice)", bind=False)
    assert refused.returncode == 50, refused.stderr
    assert "Insufficient access" in refused.stderr and "bind" in refused.stderr


def test_bind_by_upn_or_dn_and_a_wrong_password_is_49(ldap: Ldap) -> None:
    for user in (
        ADMIN,
        f"admin@{DNS.upper()}",
        f"CN=Admin,CN=Users,{BASE}",
        f"cn=admin, cn=users, {BASE.lower()}",
    ):
        conn = ldap.connection(user)
        assert conn.bound and conn.extend.standard.who_am_i() == f"dn:CN=Admin,CN=Users,{BASE}"
        conn.unbind()
    wrong = ldap.tool("ldapsearch", "-LLL", "-b", BASE, "(uid=alice)", password="Wrong-Passw0rd")
    assert wrong.returncode == 49 and "Invalid credentials (49)" in wrong.stderr
    other = ldap.tool("ldapwhoami", url=ldap.url, bind=False, env={})
    assert other.returncode == 0 and other.stdout.strip() == "anonymous"
    failed = _events(ldap, 1632)
    assert (
        failed and failed[-1].details["bind_name"] == ADMIN and PASSWORD not in json.dumps(failed[-1].details)
    )


@pytest.mark.parametrize(
    ("scope", "search_filter", "expected"),
    [
        ("sub", "(uid=alice)", {"alice"}),
        ("sub", "(UID=ALICE)", {"alice"}),
        ("sub", "(&(objectClass=inetOrgPerson)(departmentNumber=engineering))", {"alice", "bob"}),
        ("sub", "(|(sn=Smith*)(cn=*brown))", {"alice", "carol", "dave"}),
        ("sub", "(&(ou=People)(!(objectClass=organizationalUnit)))", set()),
        ("one", "(&(objectClass=person)(!(departmentNumber=Sales)))", {"alice", "bob", "zoe"}),
        ("sub", "(&(employeeNumber>=1002)(employeeNumber<=2001))", {"bob", "carol", "dave"}),
        ("sub", "(cn=*ÅNGSTR*)", {"zoe"}),
        ("sub", "(sn~=jones)", {"bob"}),
        ("sub", "(&(mail=*)(cn=a*h))", {"alice"}),
        ("sub", "(cn=c*sm*rs)", {"carol"}),
        ("base", "(objectClass=*)", set()),
    ],
)
def test_filters_and_scopes(ldap: Ldap, scope: str, search_filter: str, expected: set[str]) -> None:
    conn = ldap.connection()
    scopes = {"sub": ldap3.SUBTREE, "one": ldap3.LEVEL, "base": ldap3.BASE}
    assert conn.search(f"OU=People,{BASE}", search_filter, scopes[scope], attributes=["uid"]) or not expected
    found = [e.entry_attributes_as_dict.get("uid", []) for e in conn.entries]
    assert {str(uid) for uids in found for uid in uids} == expected
    conn.unbind()


def test_attribute_selection_types_only_and_limits(ldap: Ldap) -> None:
    conn = ldap.connection()
    conn.search(f"OU=People,{BASE}", "(uid=alice)", attributes=["CN", "mail"])
    assert conn.entries[0].entry_attributes_as_dict == {"cn": ["Alice Smith"], "mail": [f"alice@{DNS}"]}
    conn.search(f"OU=People,{BASE}", "(uid=alice)", attributes=["1.1"])
    assert conn.entries[0].entry_attributes_as_dict == {}
    conn.search(f"OU=People,{BASE}", "(uid=alice)", attributes=["+"])
    assert conn.response[0]["raw_attributes"] == {"entryDN": [f"CN=Alice Smith,OU=People,{BASE}".encode()]}
    conn.search(f"OU=People,{BASE}", "(uid=alice)", attributes=["sn"], types_only=True)
    raw = conn.response[0]["raw_attributes"]
    assert list(raw) == ["sn"] and not raw["sn"]  # the type, no values
    conn.search(BASE, "(objectClass=person)", size_limit=3)
    assert len(conn.entries) == 3 and conn.result["result"] == 4
    missing = ldap.tool("ldapsearch", "-LLL", "-b", f"CN=Nobody,OU=People,{BASE}", "-s", "base")
    assert missing.returncode == 32 and f"matched dn: ou=people,{BASE}".lower() in missing.stderr.lower()
    assert conn.compare(f"CN=Alice Smith,OU=People,{BASE}", "sn", "smith") is True
    assert conn.compare(f"CN=Alice Smith,OU=People,{BASE}", "sn", "Jones") is False
    conn.unbind()


def test_paged_search_over_10000_entries(ldap: Ldap) -> None:
    found = ldap.tool("ldapsearch", "-LLL", "-E", "pr=997/noprompt", "-b", f"OU=Bulk,{BASE}", "-s", "one",
                      "(objectClass=person)", "1.1")  # fmt: skip
    assert found.returncode == 0, found.stderr
    dns = _dns(found.stdout)
    assert len(dns) == BULK and len(set(dns)) == BULK
    conn = ldap.connection()
    paged = list(conn.extend.standard.paged_search(f"OU=Bulk,{BASE}", "(uid=b1*)", attributes=["uid"],
                                                   paged_size=250, generator=True))  # fmt: skip
    uids = {str(e["attributes"]["uid"][0]) for e in paged if e["type"] == "searchResEntry"}
    assert uids == {f"b{i}" for i in range(BULK) if str(i).startswith("1")}
    conn.unbind()


def test_writes_with_ldap_utils_and_their_result_codes(ldap: Ldap) -> None:
    ou = f"OU=Writes,{BASE}"
    added = ldap.tool(
        "ldapadd",
        input=f"""dn: {ou}
objectClass: organizationalUnit
ou: Writes

dn: CN=Eve Adams,{ou}
objectClass: inetOrgPerson
cn: Eve Adams
sn: Adams
uid: eve
""",
    )
    assert added.returncode == 0, added.stderr
    again = ldap.tool("ldapadd", input=f"dn: CN=EVE ADAMS,{ou}\nobjectClass: person\ncn: x\nsn: y\n")
    assert again.returncode == 68 and "Already exists (68)" in again.stderr
    orphan = ldap.tool("ldapadd", input=f"dn: CN=X,OU=Nowhere,{BASE}\nobjectClass: person\ncn: X\nsn: X\n")
    assert orphan.returncode == 32 and f"matched DN: {BASE}" in orphan.stderr
    changed = ldap.tool(
        "ldapmodify",
        input=f"""dn: CN=Eve Adams,{ou}
changetype: modify
add: mail
mail: eve@{DNS}
-
replace: sn
sn: Adamson
-
delete: uid
""",
    )
    assert changed.returncode == 0, changed.stderr
    twice = ldap.tool(
        "ldapmodify", input=f"dn: CN=Eve Adams,{ou}\nchangetype: modify\nadd: mail\nmail: EVE@{DNS}\n"
    )
    assert twice.returncode == 20, twice.stderr
    absent = ldap.tool(
        "ldapmodify", input=f"dn: CN=Eve Adams,{ou}\nchangetype: modify\ndelete: uid\nuid: eve\n"
    )
    assert absent.returncode == 16, absent.stderr
    renamed = ldap.tool("ldapmodrdn", "-r", f"CN=Eve Adams,{ou}", "CN=Eve Adamson")
    assert renamed.returncode == 0, renamed.stderr
    moved = ldap.tool("ldapmodrdn", "-s", f"OU=People,{BASE}", f"CN=Eve Adamson,{ou}", "CN=Eve Adamson")
    assert moved.returncode == 0, moved.stderr
    shown = ldap.tool("ldapsearch", "-LLL", "-b", f"CN=Eve Adamson,OU=People,{BASE}", "-s", "base")
    assert shown.returncode == 0, shown.stderr
    assert "cn: Eve Adamson" in shown.stdout and "Eve Adams\n" not in shown.stdout
    assert f"mail: eve@{DNS}" in shown.stdout and "sn: Adamson" in shown.stdout and "uid:" not in shown.stdout
    subtree = ldap.tool("ldapadd", input=f"dn: CN=Kid,{ou}\nobjectClass: person\ncn: Kid\nsn: K\n")
    assert subtree.returncode == 0, subtree.stderr
    non_leaf = ldap.tool("ldapdelete", ou)
    assert non_leaf.returncode == 66 and "subordinate objects must be deleted first" in non_leaf.stderr
    gone = ldap.tool("ldapdelete", f"CN=Kid,{ou}", ou, f"CN=Eve Adamson,OU=People,{BASE}")
    assert gone.returncode == 0, gone.stderr
    none = ldap.tool("ldapdelete", ou)
    assert none.returncode == 32
    # What LDAP wrote went through the service: the REST API and the audit trail see it.
    renames = _events(ldap, 1630)
    assert renames and renames[-1].actor == f"ldap:CN=Admin,CN=Users,{BASE}"


def test_restore_refuses_writes_until_active_and_brings_back_what_ldapsearch_saw(ldap: Ldap) -> None:
    ou = f"OU=Snap,{BASE}"
    added = ldap.tool("ldapadd", input=f"dn: {ou}\nobjectClass: organizationalUnit\nou: Snap\n\n"
                      f"dn: CN=Kept,{ou}\nobjectClass: person\ncn: Kept\nsn: Before\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    with ldap.server.client(ldap.token) as http:
        made = http.post(f"/api/v1/directories/{ldap.directory_id}/snapshots", json={"name": "ldap"})
        assert made.status_code == 201, made.text
        seen = ldap.tool("ldapsearch", "-LLL", "-b", BASE, EXCEPT_BULK)
        assert seen.returncode == 0 and "sn: Before" in seen.stdout
        changed = ldap.tool(
            "ldapmodify", input=f"dn: CN=Kept,{ou}\nchangetype: modify\nreplace: sn\nsn: After\n"
        )
        assert changed.returncode == 0, changed.stderr
        assert (
            ldap.tool(
                "ldapadd", input=f"dn: CN=Later,{ou}\nobjectClass: person\ncn: Later\nsn: L\n"
            ).returncode
            == 0
        )

        # Bound before the restore starts: a bind on a busy machine can take longer than
        # the restore itself, and the first write must reach the directory while it restores.
        conn = ldap.connection()
        try:
            started = http.post(f"/api/v1/snapshots/{made.json()['id']}/restore")
            assert started.status_code == 202, started.text
            answers = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                conn.modify(f"CN=Kept,{ou}", {"description": [(ldap3.MODIFY_REPLACE, ["during"])]})
                answers.append(conn.result["result"])
                if answers[-1] == 0:
                    break
                assert answers[-1] == 52, conn.result
                assert "restor" in conn.result["message"] or "Active" in conn.result["message"]
            assert answers[0] == 52 and answers[-1] == 0, answers
            assert http.get(f"/api/v1/directories/{ldap.directory_id}").json()["stage"] == "Active"
            conn.modify(f"CN=Kept,{ou}", {"description": [(ldap3.MODIFY_DELETE, [])]})
        finally:
            conn.unbind()
    after = ldap.tool("ldapsearch", "-LLL", "-b", BASE, EXCEPT_BULK)
    assert after.returncode == 0
    assert after.stdout == seen.stdout


def test_ldap_written_entries_export_to_ldif_that_slapadd_accepts(ldap: Ldap, tmp_path: Path) -> None:
    slapadd = _sbin("slapadd")
    if slapadd is None:
        if os.environ.get("CI"):
            raise RuntimeError("slapadd is missing in CI: .ci/run installs the Debian package slapd")
        pytest.skip("slapadd is not installed (Debian package slapd)")
    ou = f"OU=Export,{BASE}"
    added = ldap.tool(
        "ldapadd",
        input=f"""dn: {ou}
objectClass: organizationalUnit
ou: Export

dn: uid=frank,{ou}
objectClass: inetOrgPerson
cn: Frank Ölmann
sn: Ölmann
uid: frank
jpegPhoto:: /9j/4AAQSkZJRgABAQ==
""",
    )
    assert added.returncode == 0, added.stderr
    out = tmp_path / "export.ldif"
    exported = run_ams("directory", "export", ldap.directory_id, "--out", str(out), home=ldap.home)
    assert exported.returncode == 0, exported.stderr
    conf = tmp_path / "slapd.conf"
    (tmp_path / "db").mkdir()
    schemas = [f"include /etc/ldap/schema/{s}.schema" for s in ("core", "cosine", "inetorgperson", "nis")]
    conf.write_text("\n".join([*schemas, "modulepath /usr/lib/ldap", "moduleload back_mdb", "database mdb",
                               f'suffix "{BASE.lower()}"',
                               f"directory {tmp_path / 'db'}"]) + "\n")  # fmt: skip
    loaded = subprocess.run([slapadd, "-q", "-f", str(conf), "-l", str(out)], capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr
    entries = {e.dn.lower(): e for e in ldif.parse(out.read_bytes())}
    assert entries[f"uid=frank,{ou}".lower()].get("jpegPhoto") == [base64.b64decode("/9j/4AAQSkZJRgABAQ==")]
    assert ldap.tool("ldapdelete", f"uid=frank,{ou}", ou).returncode == 0


def test_starttls_and_ldaps_with_an_openssl_certificate(ldap: Ldap) -> None:
    tls_url = ldap.url  # libldap checks the IP against the certificate's subjectAltName
    started = ldap.tool(
        "ldapsearch", "-ZZ", "-LLL", "-b", f"OU=People,{BASE}", "(uid=bob)", "cn", url=tls_url
    )
    assert started.returncode == 0, started.stderr
    assert "cn: Bob Jones" in started.stdout
    secure = ldap.tool("ldapsearch", "-LLL", "-b", f"OU=People,{BASE}", "(uid=bob)", "cn",
                       url=f"ldaps://127.0.0.1:{ldap.tls_port}")  # fmt: skip
    assert secure.returncode == 0, secure.stderr
    assert "cn: Bob Jones" in secure.stdout
    # A client that does not trust the certificate refuses it (it is the server's, not a default).
    untrusted = ldap.tool("ldapsearch", "-ZZ", "-LLL", "-b", BASE, "(uid=bob)", url=tls_url,
                          env={"LDAPTLS_CACERT": "/dev/null"})  # fmt: skip
    assert untrusted.returncode != 0


def test_garbage_closes_the_connection_with_a_notice(ldap: Ldap) -> None:
    for garbage in (
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x30\x05\x02\x01\x01\xff\xff",
        b"\x30\x84\xff\xff\xff\xff",
    ):
        with socket.create_connection(("127.0.0.1", ldap.port), timeout=10) as sock:
            sock.sendall(garbage)
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        assert b"1.3.6.1.4.1.1466.20036" in data  # the Notice of Disconnection, then EOF
    # The server still answers.
    assert ldap.tool("ldapsearch", "-LLL", "-s", "base", "-b", "", bind=False).returncode == 0


def test_admin_password_from_the_cli(ldap: Ldap) -> None:
    made = run_ams("directory", "create", "lab.example.org", "--admin-password-stdin", "--json",
                   home=ldap.home, input="Lab-Passw0rd\n")  # fmt: skip
    assert made.returncode == 0, made.stderr
    lab = json.loads(made.stdout)["id"]
    weak = run_ams("directory", "admin-password", lab, "--password-stdin", home=ldap.home, input="short\n")
    assert weak.returncode == 32 and "8 to 64 characters" in weak.stderr and "Traceback" not in weak.stderr
    changed = run_ams(
        "directory", "admin-password", lab, "--password-stdin", home=ldap.home, input="Lab-Passw0rd-2\n"
    )
    assert changed.returncode == 0, changed.stderr
    time.sleep(1.1)  # the server's list of directories is kept for a second
    lab_dse = ldap.tool("ldapsearch", "-LLL", "-s", "base", "-b", "", "namingContexts", bind=False)
    assert "namingContexts: DC=lab,DC=example,DC=org" in lab_dse.stdout
    conn = ldap3.Connection(ldap3.Server("127.0.0.1", port=ldap.port), user="Admin@lab.example.org",
                            password="Lab-Passw0rd-2")  # fmt: skip
    assert conn.bind()
    # The corp admin may not write into the lab directory.
    corp = ldap.connection()
    corp.add("OU=X,DC=lab,DC=example,DC=org", ["organizationalUnit"], {"ou": "X"})
    assert corp.result["result"] == 50
    old = ldap3.Connection(ldap3.Server("127.0.0.1", port=ldap.port), user="Admin@lab.example.org",
                           password="Lab-Passw0rd")  # fmt: skip
    assert not old.bind() and old.result["result"] == 49
    old.unbind()
    corp.unbind()
    conn.unbind()


def test_serve_refuses_bad_ldap_options(ldap: Ldap, tmp_path: Path) -> None:
    # Checked before the home is opened or locked: the running service's home will do.
    port = str(free_port())
    half = run_ams(
        "serve", "--port", port, "--ldap-port", port, "--ldap-tls-cert", str(ldap.cert), home=ldap.home
    )
    assert half.returncode == 12 and "--ldap-tls-key" in half.stderr and "Traceback" not in half.stderr
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    wrong = run_ams(
        "serve", "--ldap-port", "0", "--ldap-tls-cert", str(bad), "--ldap-tls-key", str(bad), home=ldap.home
    )
    assert wrong.returncode == 12 and "cannot use" in wrong.stderr and "Traceback" not in wrong.stderr


def test_a_restore_or_deletion_by_another_process_shows_on_the_next_search(ldap: Ldap) -> None:
    """Searches read the directory's state afresh (not a copy the listener cached): another
    process restoring or deleting the directory is seen by the very next operation."""
    dns, base = "other.example.com", "DC=other,DC=example,DC=com"
    instance = open_instance(Home(ldap.home))
    try:
        other = directories.create(
            instance, dns_name=dns, short_name=None, admin_password=PASSWORD, actor="t"
        ).id
        objects.import_entries(
            instance, other,
            [Entry(base, ["top", "domain"], {"dc": ["other"]}),
             Entry(f"uid=solo,{base}", ["top", "person"], {"uid": ["solo"], "cn": ["Solo"], "sn": ["S"]})],
            actor="test",
        )  # fmt: skip
        conn = ldap.connection(f"Admin@{dns}")
        deadline = time.monotonic() + 30  # the listener learns of new directories within a second
        while not conn.bound and time.monotonic() < deadline:
            time.sleep(0.2)
            conn = ldap.connection(f"Admin@{dns}")
        assert conn.bound, conn.result

        def answers() -> tuple[int, int]:
            conn.search(f"uid=solo,{base}", "(objectClass=*)", ldap3.BASE)
            read = conn.result["result"]
            conn.search(base, "(uid=solo)", ldap3.SUBTREE)
            return read, conn.result["result"]

        assert answers() == (0, 0) and len(conn.entries) == 1
        with instance.transaction() as session:  # what a worker does when a restore starts
            directories.set_stage(directories.load(session, other), "Restoring", datetime.now(UTC))
        assert answers() == (52, 52)
        assert "restoring" in conn.result["message"]
        with instance.transaction() as session:
            directories.set_stage(directories.load(session, other), "Active", datetime.now(UTC))
        assert answers() == (0, 0)
        directories.delete(instance, other, actor="test")
        assert answers() == (32, 32)
        conn.unbind()
    finally:
        instance.close()
