"""AMS on a real PostgreSQL server, through the installed `ams` command.

The session starts one throwaway cluster (tests/pg.py) and stops it at the end; every test
gets a fresh, empty database owned by an unprivileged role. Without PostgreSQL binaries the
tests that need a server are skipped, unless AMS_TEST_REQUIRE_POSTGRES or CI is set, where
a missing server is a failure: CI installs PostgreSQL, and a skip there would hide that.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from ams.db.migrate import head_revision
from ams.errors import DatabaseUnreadable, InstanceExists
from pg import PostgresServer, free_port

pytestmark = pytest.mark.postgres

AMS = Path(sys.executable).parent / "ams"
RECOVERY_PASSWORD = "correct-Horse-battery-staple-91"


# -- fixtures ---------------------------------------------------------------------------


# -- helpers ----------------------------------------------------------------------------


def run_ams(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith("AMS_") and k != "CREDENTIALS_DIRECTORY"
    }
    full_env.update(env or {})
    return subprocess.run(
        [str(AMS), *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        check=False,
    )


def init(home: Path, url: str) -> subprocess.CompletedProcess[str]:
    return run_ams(
        "init",
        "--home",
        str(home),
        "--database",
        url,
        "--recovery-password-stdin",
        "--json",
        stdin=RECOVERY_PASSWORD + "\n",
    )


def ok_json(proc: subprocess.CompletedProcess[str], what: str) -> Any:
    """The JSON a successful command printed. On failure, shows stderr only (stdout may hold secrets)."""
    assert proc.returncode == 0, f"{what} failed with {proc.returncode}: {proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"{what} did not print JSON")


def assert_one_line_error(proc: subprocess.CompletedProcess[str], status: int) -> str:
    assert proc.returncode == status, f"exit {proc.returncode}, expected {status}: {proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == "", "a failed command printed on standard output"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    leaked = RECOVERY_PASSWORD in proc.stderr
    assert not leaked, "the recovery password was printed"
    return lines[0]


def status(home: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = ok_json(run_ams("status", "--home", str(home), "--json", env=env), "ams status")
    return data


def db_snapshot(url: str) -> dict[str, tuple[int, str]]:
    """Each table of the database with its row count and a digest of its rows."""
    out: dict[str, tuple[int, str]] = {}
    with psycopg.connect(url, connect_timeout=10) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename"
            )
        ]
        for table in tables:
            rows = conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table))).fetchall()
            digest = hashlib.sha256(repr(sorted(map(repr, rows))).encode()).hexdigest()
            out[table] = (len(rows), digest)
    return out


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.init-"))


# -- tests ------------------------------------------------------------------------------


def test_init_status_and_apikey_on_postgres(pg_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    created = ok_json(init(home, pg_url), "ams init")
    assert created["database"] == {"engine": "postgresql", "revision": head_revision()}
    assert created["recovery_password"] is None  # given on stdin, so never printed
    assert not (home / "data" / "ams.db").exists(), "a PostgreSQL instance must not create SQLite"

    data = status(home)
    assert data["instance_id"] == created["instance_id"]
    assert data["database"]["engine"] == "postgresql"
    assert data["database"]["revision"] == data["database"]["head"] == head_revision()
    assert data["database"]["url"] == pg_url
    assert data["master_key"]["state"] == "unlocked"
    assert data["master_key"]["fingerprint"] == created["master_key"]["fingerprint"]

    key = ok_json(
        run_ams("apikey", "create", "--home", str(home), "--name", "ci", "--role", "admin", "--json"),
        "ams apikey create",
    )
    assert key["role"] == "admin"
    assert key["name"] == "ci"
    assert key["id"].startswith("ak_")
    token_id, _, token_secret = key["token"].partition(".")
    token_matches = token_id == key["id"] and token_secret == key["secret"] and len(key["secret"]) >= 32
    assert token_matches, "the token is not <id>.<secret> with a long secret"

    # The rows are in PostgreSQL, and the secret is not stored in the clear.
    with psycopg.connect(pg_url, connect_timeout=10) as conn:
        rows = conn.execute("SELECT id, role, secret_hash, secret_sealed FROM api_keys").fetchall()
        (instance_rows,) = conn.execute("SELECT count(*) FROM instance").fetchone() or (None,)
    assert [(r[0], r[1]) for r in rows] == [(key["id"], "admin")]
    stored_in_clear = key["secret"] in rows[0][2] or key["secret"].encode() in bytes(rows[0][3])
    assert not stored_in_clear, "the API key secret is stored in the clear"
    assert instance_rows == 1

    # The same instance with its database server unreachable (AMS_DATABASE__URL wins over
    # the file): a one-line error that does not show the URL's password.
    dead = f"postgresql://ams:not-the-password@127.0.0.1:{free_port()}/ams"
    proc = run_ams("status", "--home", str(home), "--json", env={"AMS_DATABASE__URL": dead})
    line = assert_one_line_error(proc, DatabaseUnreadable.exit_status)
    leaked = "not-the-password" in line
    assert not leaked, "the database password was printed"


def test_second_init_on_the_same_database_is_refused(pg_url: str, tmp_path: Path) -> None:
    first = tmp_path / "first"
    ok_json(init(first, pg_url), "ams init")
    before = db_snapshot(pg_url)
    assert {"instance", "alembic_version", "api_keys", "audit_events"} <= set(before)

    second = tmp_path / "second"
    line = assert_one_line_error(init(second, pg_url), InstanceExists.exit_status)
    assert "already holds an AMS instance" in line
    assert not second.exists(), "the refused init created its home"
    assert leftovers(tmp_path, "second") == []
    assert db_snapshot(pg_url) == before, "the refused init changed the database"


def test_lost_service_key_locks_and_recovery_password_unlocks(pg_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    fingerprint = ok_json(init(home, pg_url), "ams init")["master_key"]["fingerprint"]
    service_key = home / "keys" / "service.key"
    old_key = service_key.read_bytes()
    service_key.unlink()

    locked = status(home)["master_key"]
    assert locked["state"] == "locked"
    assert locked["fingerprint"] == fingerprint
    assert locked["locked_reason"]

    unlocked = ok_json(
        run_ams(
            "security",
            "unlock",
            "--home",
            str(home),
            "--password-stdin",
            "--json",
            stdin=RECOVERY_PASSWORD + "\n",
        ),
        "ams security unlock",
    )
    assert unlocked["state"] == "unlocked"
    assert unlocked["fingerprint"] == fingerprint

    # A new process opens the master key with the new service key.
    after = status(home)["master_key"]
    assert after["state"] == "unlocked"
    assert after["fingerprint"] == fingerprint
    assert service_key.stat().st_mode & 0o777 == 0o600
    replaced = service_key.read_bytes() != old_key
    assert replaced, "unlock must write a new service key"


def test_init_with_unreachable_database_fails_cleanly(tmp_path: Path) -> None:
    """Nothing listens on the port: a one-line error, no traceback, nothing created."""
    home = tmp_path / "home"
    url = f"postgresql://ams@127.0.0.1:{free_port()}/ams"
    line = assert_one_line_error(init(home, url), DatabaseUnreadable.exit_status)
    assert "cannot be read" in line
    assert not home.exists()
    assert leftovers(tmp_path, "home") == []


def test_init_with_missing_database_fails_cleanly(pg_server: PostgresServer, tmp_path: Path) -> None:
    """The server answers but the database does not exist."""
    home = tmp_path / "home"
    line = assert_one_line_error(
        init(home, pg_server.url("no_such_database")), DatabaseUnreadable.exit_status
    )
    assert "no_such_database" in line
    assert not home.exists()
    assert leftovers(tmp_path, "home") == []
