"""Helpers shared by the backup, restore and schedule tests (no tests in here)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ams import crypto
from ams.home import Home
from ams.instance import Instance

ACCOUNT = "Administrator"


def table_dump(db_path: Path, *, skip: tuple[str, ...] = ()) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, ordered: to compare two databases exactly."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {
            t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr)  # noqa: S608
            for t in sorted(tables)
            if t not in skip
        }
    finally:
        conn.close()


def audit_until(db_path: Path, seq: int) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT * FROM audit_events WHERE seq <= ? ORDER BY seq", (seq,)).fetchall()
    finally:
        conn.close()


def max_audit_seq(db_path: Path) -> int:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT max(seq) FROM audit_events").fetchone()[0])
    finally:
        conn.close()


class Fleet:
    """Devices registered through the vault service, reporting passwords like ams-agent does."""

    def __init__(self, instance: Instance) -> None:
        from ams.vault import certificates, regkeys

        self.instance = instance
        certificates.ensure_active(instance, "agent", "test")
        self.regkey = regkeys.create(instance, "fleet", "test").key
        self.tokens: dict[str, str] = {}
        self.passwords: dict[str, dict[int, str]] = {}

    def bind(self, instance: Instance) -> Fleet:
        """The same devices, reporting to another (copied) instance."""
        other = Fleet.__new__(Fleet)
        other.instance = instance
        other.regkey = self.regkey
        other.tokens = dict(self.tokens)
        other.passwords = {k: dict(v) for k, v in self.passwords.items()}
        return other

    def add(self, name: str) -> str:
        from ams.vault import devices

        registered = devices.register(self.instance, self.regkey, name)
        self.tokens[registered.device_id] = registered.token
        self.passwords[registered.device_id] = {}
        return registered.device_id

    def rotate(self, device_id: str, password: str | None = None) -> int:
        from ams.vault import devices, passwords

        device = devices.authenticate(self.instance, self.tokens[device_id])
        current = max(self.passwords[device_id], default=None)
        advice = passwords.decide(self.instance, device, current)
        version = advice.next_version
        secret = password or crypto.random_secret(12)
        plaintext = json.dumps(
            {
                "account": ACCOUNT,
                "password": secret,
                "created_at": self.instance.clock.now().isoformat(),
                "version": version,
            }
        ).encode()
        cert_der = _der(advice.certificate_pem)
        blob = crypto_blob().encrypt_password(cert_der, plaintext)
        passwords.store(self.instance, device, ACCOUNT, version, base64.b64encode(blob).decode())
        self.passwords[device_id][version] = secret
        self.instance.clock.advance(timedelta(seconds=61))  # type: ignore[attr-defined]
        return version

    def read_all(self, instance: Instance) -> dict[str, dict[int, str | None]]:
        from ams.vault import passwords

        out: dict[str, dict[int, str | None]] = {}
        for device_id in self.passwords:
            answer = passwords.read(instance, device_id, "test", history=True)
            entries = [answer["current"], *answer["history"]] if answer.get("current") else answer["history"]
            out[device_id] = {e["version"]: e["password"] for e in entries}
        return out


def crypto_blob() -> Any:
    from ams.crypto import blob

    return blob


def _der(pem: str) -> bytes:
    from ams.crypto import certs

    return certs.certificate_from_pem(pem)


RECOVERY = "Tangerine-Orbit-Lantern-4471"


def build_golden(root: Path) -> tuple[Home, Fleet, datetime]:
    """An instance with API keys, config files, snapshots, a certificate, devices and passwords."""
    from ams import apikeys
    from ams.clock import ManualClock
    from ams.instance import create_instance, open_instance

    home = Home(root)
    clock = ManualClock()
    create_instance(home, recovery_password=RECOVERY, actor="test", clock=clock)
    instance = open_instance(home, clock)
    try:
        apikeys.create(instance, "ops", apikeys.Role.ADMIN, "test")
        apikeys.create(instance, "reader", apikeys.Role.READER, "test")
        (home.config_dir / "scripts" / "hook.sh").write_text("#!/bin/sh\necho restored\n")
        os.chmod(home.config_dir / "scripts" / "hook.sh", 0o700)
        (home.config_dir / "templates" / "mail.txt").write_text("Hello {name}\n")
        (home.snapshots_dir / "d-0123456789").mkdir(mode=0o700)
        (home.snapshots_dir / "d-0123456789" / "s-0000000001.ldif").write_text("dn: dc=example\n")
        for path in (
            home.config_dir / "templates" / "mail.txt",
            home.snapshots_dir / "d-0123456789" / "s-0000000001.ldif",
        ):
            os.chmod(path, 0o600)  # restored files are 0600 (no mode comes from a backup)
        fleet = Fleet(instance)
        for n in range(3):
            device = fleet.add(f"pc-{n}")
            for _ in range(3):
                fleet.rotate(device)
        return home, fleet, clock.now()
    finally:
        instance.close()


def copy_home(golden: Home, target: Path) -> Home:
    shutil.copytree(golden.root, target, symlinks=True)
    return Home(target)


_GOLDEN: tuple[Home, Fleet, datetime] | None = None


def golden_once(factory: Any) -> tuple[Home, Fleet, datetime]:
    """One golden instance per test session (RSA-4096 generation is slow): tests copy it."""
    global _GOLDEN
    if _GOLDEN is None:
        _GOLDEN = build_golden(factory.mktemp("golden") / "home")
    return _GOLDEN
