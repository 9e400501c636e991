"""End to end: legacy agents keep their passwords on their computer objects, over LDAP.

A real `ams serve --ldap-port`, two real `ams-agent --mode directory` devices bound to
computer objects of one directory, one `ams-agent` device of the agent scope, and the real
`ams` commands: rotations read back decrypted; a device that tries what it may not; the
directory certificate marked lost (only its two devices forced); its PFX bringing those
passwords back on a new home restored from a backup; and a snapshot restore that moves the
stored passwords back in time, detected and forced.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from ams import apikeys
from ams.clock import SystemClock
from ams.directory import directories, ldif, objects
from ams.home import Home
from ams.instance import create_instance, open_instance
from ams.vault import certificates, regkeys
from conftest import RECOVERY_PASSWORD, run_ams
from server import FileAgent, Server, free_port

with warnings.catch_warnings():
    # ldap3 2.9.1 imports pyasn1's old names (tagMap), which pyasn1 0.6 deprecates.
    warnings.simplefilter("ignore", DeprecationWarning)
    import ldap3

AGENT = Path(sys.executable).parent / "ams-agent"
SUFFIX = "DC=corp,DC=example,DC=com"
PC1 = f"CN=PC1,OU=Computers,{SUFFIX}"
PC2 = f"CN=PC2,OU=Computers,{SUFFIX}"
BLOB = "msLAPS-EncryptedPassword"
EXPIRY = "msLAPS-PasswordExpirationTime"
PFX_PASSWORD = "Harbor-Lantern-Osprey-4417"
LDIF = f"""dn: {SUFFIX}
objectClass: top
objectClass: domain
dc: corp

dn: OU=Computers,{SUFFIX}
objectClass: top
objectClass: organizationalUnit
ou: Computers

dn: {PC1}
objectClass: top
objectClass: computer
cn: PC1

dn: {PC2}
objectClass: top
objectClass: computer
cn: PC2
"""


def _json(result: Any) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


class LegacyAgent:
    """A real ams-agent in directory mode, the password landing in a file."""

    def __init__(self, folder: Path, ldap_url: str) -> None:
        self.state = folder / "state" / "state.json"
        self.password_file = folder / "password"
        self.ldap_url = ldap_url

    def run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AMS_")}
        return subprocess.run(
            [str(AGENT), *args, "--state", str(self.state)],
            input=input, capture_output=True, text=True, env=env, timeout=90,
        )  # fmt: skip

    def register(
        self, server: Server, directory_id: str, dn: str, *, key: str | None, token: str | None
    ) -> str:
        how = ["--registration-key-stdin"] if key else ["--token-stdin"]
        done = self.run(
            "register", "--server", server.url, "--name", dn.split(",")[0][3:], *how,
            "--directory", directory_id, "--dn", dn, "--ldap-url", self.ldap_url,
            input=(key or token or "") + "\n",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return str(json.loads(self.state.read_text())["device_id"])

    def run_once(self) -> str:
        done = self.run(
            "run",
            "--once",
            "--mode",
            "directory",
            "--setter",
            f"file:{self.password_file}",
            "--max-delay",
            "1",
        )
        assert done.returncode == 0, done.stderr
        return done.stderr

    @property
    def token(self) -> str:
        return str(json.loads(self.state.read_text())["token"])

    @property
    def password(self) -> str:
        return self.password_file.read_text().strip()


def _password(home: Path, device: str) -> str:
    got = run_ams("password", "get", device, home=home)
    assert got.returncode == 0, got.stderr
    return got.stdout.strip()


class Admin:
    """The REST API with an admin key: the checks, without a process per question."""

    def __init__(self, server: Server, token: str) -> None:
        self.http = server.client(token)

    def get(self, path: str, **params: Any) -> Any:
        answer = self.http.get(path, params=params)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def post(self, path: str, status: int = 200, **kwargs: Any) -> Any:
        answer = self.http.post(path, **kwargs)
        assert answer.status_code == status, answer.text
        return answer.json()

    def password(self, device: str) -> str:
        return str(self.get(f"/api/v1/devices/{device}/password")["password"])

    def forced(self) -> dict[str, bool]:
        return {d["id"]: d["rotation_forced"] for d in self.get("/api/v1/devices")}

    def events(self, event_id: int) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/audit", event_id=event_id))

    def wait_active(self, directory_id: str) -> None:
        deadline = time.monotonic() + 60
        while self.get(f"/api/v1/directories/{directory_id}")["stage"] != "Active":
            assert time.monotonic() < deadline, "the directory did not come back Active"
            time.sleep(0.2)


def _connect(port: int, dn: str, password: str) -> ldap3.Connection:
    server = ldap3.Server("127.0.0.1", port=port, get_info=ldap3.NONE)
    conn = ldap3.Connection(server, user=dn, password=password, raise_exceptions=False)
    assert conn.bind(), conn.result
    return conn


def _read_as(port: int, bind_dn: str, token: str, dn: str) -> dict[str, list[bytes]]:
    conn = _connect(port, bind_dn, token)
    try:
        return _object(conn, dn)
    finally:
        conn.unbind()


def _object(conn: ldap3.Connection, dn: str) -> dict[str, list[bytes]]:
    assert conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=["*"]), conn.result
    [entry] = [e for e in conn.response if e["type"] == "searchResEntry"]
    return {k.lower(): list(v) for k, v in entry["raw_attributes"].items()}


def _instance_with_a_directory(home: Path) -> tuple[str, str, str]:
    """The starting point, made in-process (an e2e test's setup, not what it tests): an
    instance with a directory holding two computer objects, the agent and directory scopes'
    first certificates (RSA-2048: the key size is not under test), an admin API key and a
    registration key. Returns the directory id, the API key's token and the registration key."""
    certificates.KEY_SIZE = 2048
    try:
        create_instance(Home(home), recovery_password=RECOVERY_PASSWORD, actor="test", clock=SystemClock())
        instance = open_instance(Home(home), SystemClock())
        try:
            directory_id = directories.create(
                instance, dns_name="corp.example.com", short_name="CORP", actor="test"
            ).id
            objects.import_entries(instance, directory_id, ldif.parse(LDIF), actor="test")
            for scope in ("agent", directory_id):
                certificates.create(instance, scope, "test")
            token = apikeys.create(instance, "admin", apikeys.Role.ADMIN, "test").token
            key = regkeys.create(instance, "legacy", "test").key
        finally:
            instance.close()
    finally:
        certificates.KEY_SIZE = 4096
    return directory_id, token, key


def test_legacy_agents_store_their_passwords_in_the_directory(tmp_path: Path) -> None:
    home = tmp_path / "home"
    directory_id, token, key = _instance_with_a_directory(home)
    ldap_port = free_port()
    ldap_url = f"ldap://127.0.0.1:{ldap_port}"

    with Server(home, args=["--ldap-port", str(ldap_port)]) as server:
        admin = Admin(server, token)
        # PC1 registers itself with a registration key; PC2 was registered by an administrator.
        pc1 = LegacyAgent(tmp_path / "pc1", ldap_url)
        pc1_id = pc1.register(server, directory_id, PC1, key=key, token=None)
        made = _json(
            run_ams(
                "device", "register", "PC2", "--directory", directory_id, "--dn", PC2, "--json", home=home
            )
        )
        pc2 = LegacyAgent(tmp_path / "pc2", ldap_url)
        assert pc2.register(server, directory_id, PC2, key=None, token=made["token"]) == made["device_id"]
        pc2_id = made["device_id"]
        linux = FileAgent(tmp_path / "linux")
        registered = linux._run("register", "--server", server.url, "--name", "linux1",
                                "--registration-key-stdin", input=key + "\n")  # fmt: skip
        assert registered.returncode == 0, registered.stderr
        linux_id = str(json.loads(linux.state.read_text())["device_id"])
        assert linux.run_once().returncode == 0
        linux_password = linux.password

        # First rotations over LDAP; read back decrypted with the directory's certificate.
        assert "reason: new" in pc1.run_once()
        assert "reason: new" in pc2.run_once()
        assert "nothing to do" in pc1.run_once()
        assert _password(home, pc1_id) == pc1.password  # `ams password get`
        shown = admin.get(f"/api/v1/devices/{pc2_id}/password")  # REST
        [directory_cert] = admin.get("/api/v1/certificates", scope=directory_id)
        assert shown["password"] == pc2.password
        assert shown["certificate_thumbprint"] == directory_cert["thumbprint"]
        first_pc1 = pc1.password

        # What a device sees and may write over LDAP.
        conn = _connect(ldap_port, PC1, pc1.token)
        own = _object(conn, PC1)
        assert own[BLOB.lower()] and own[EXPIRY.lower()][0] != b"0"
        other = _object(conn, PC2)
        assert not any(name.startswith("mslaps-") for name in other)  # no other device's blob
        assert other["cn"] == [b"PC2"]
        for dn, changes in (
            (PC1, {"description": [(ldap3.MODIFY_REPLACE, ["mine"])]}),
            (PC2, {EXPIRY: [(ldap3.MODIFY_REPLACE, ["0"])]}),
            (PC2, {BLOB: [(ldap3.MODIFY_REPLACE, [own[BLOB.lower()][0]])]}),
        ):
            assert not conn.modify(dn, changes)
            assert conn.result["result"] == 50, conn.result  # insufficientAccessRights
        assert not conn.add(f"CN=PC3,OU=Computers,{SUFFIX}", ["top", "computer"])
        assert conn.result["result"] == 50
        assert not conn.delete(PC2)
        assert conn.result["result"] == 50
        conn.unbind()
        assert _read_as(ldap_port, PC2, pc2.token, PC2)[EXPIRY.lower()][0] != b"0"
        wrong = ldap3.Connection(
            ldap3.Server("127.0.0.1", port=ldap_port, get_info=ldap3.NONE), user=PC2, password=pc1.token
        )
        assert not wrong.bind() and wrong.result["result"] == 49  # invalidCredentials
        wrong.unbind()
        assert len(admin.events(1415)) == 3

        # A snapshot now, with both devices' first passwords on their objects.
        snap = admin.post(f"/api/v1/directories/{directory_id}/snapshots", 201, json={})

        # Export the directory certificate, then lose it: only the directory's two devices rotate.
        pfx = tmp_path / "directory.pfx"
        exported = run_ams(
            "certs", "export", directory_cert["thumbprint"], "--out", str(pfx), "--password-stdin",
            home=home, input=PFX_PASSWORD + "\n",
        )  # fmt: skip
        assert exported.returncode == 0, exported.stderr
        admin.post(f"/api/v1/certificates/{directory_cert['thumbprint']}/lost")
        assert admin.forced() == {pc1_id: True, pc2_id: True, linux_id: False}
        assert _read_as(ldap_port, PC1, pc1.token, PC1)[EXPIRY.lower()] == [b"0"]
        assert "reason: forced" in pc1.run_once()
        assert "reason: forced" in pc2.run_once()
        assert admin.password(pc1_id) == pc1.password != first_pc1
        assert admin.forced() == {pc1_id: False, pc2_id: False, linux_id: False}

        # Restore the snapshot: the objects hold the older passwords again; both devices are
        # detected and forced, the agent-scope device is untouched.
        admin.post(f"/api/v1/snapshots/{snap['id']}/restore", 202)
        admin.wait_active(directory_id)
        [completed] = admin.events(1621)
        assert sorted(completed["details"]["passwords_rolled_back"]) == sorted([pc1_id, pc2_id])
        assert {e["target"] for e in admin.events(1624)} == {pc1_id, pc2_id}
        assert admin.forced() == {pc1_id: True, pc2_id: True, linux_id: False}
        assert admin.password(linux_id) == linux_password
        assert _read_as(ldap_port, PC2, pc2.token, PC2)[EXPIRY.lower()] == [b"0"]
        assert admin.password(pc1_id) == pc1.password  # the vault kept the newer password
        assert "reason: forced" in pc2.run_once()
        assert admin.password(pc2_id) == pc2.password

        backup = admin.post("/api/v1/backups", 201)
        admin.http.close()

    # A new home from the backup: the passwords under the lost certificate read again only
    # once its PFX is imported.
    other = tmp_path / "other"
    _json(
        run_ams(
            "backup", "restore", backup["path"], "--password-stdin", "--json", home=other,
            input=RECOVERY_PASSWORD + "\n",
        )
    )  # fmt: skip
    history = _json(run_ams("password", "get", pc1_id, "--history", "--json", home=other))
    assert history["current"]["password"] == pc1.password
    assert [h["recoverable"] for h in history["history"]] == [False]
    imported = run_ams(
        "certs", "import", str(pfx), "--scope", directory_id, "--password-stdin", home=other,
        input=PFX_PASSWORD + "\n",
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    history = _json(run_ams("password", "get", pc1_id, "--history", "--json", home=other))["history"]
    assert [(h["password"], h["certificate_thumbprint"]) for h in history] == [
        (first_pc1, directory_cert["thumbprint"])
    ]
