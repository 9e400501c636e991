"""ams init and opening an instance: layout, modes, and every refusal changing nothing."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from ams.clock import ManualClock
from ams.db import migrate
from ams.errors import (
    BadInput,
    DatabaseUnreadable,
    InstanceExists,
    InstanceNotFound,
    SchemaMismatch,
    WeakPassword,
)
from ams.home import Home
from ams.instance import Instance, create_instance, open_instance
from conftest import RECOVERY_PASSWORD, run_ams, tree_digest


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_creates_the_layout_private(instance: Instance) -> None:
    home = instance.home
    assert _mode(home.root) == 0o700
    for folder in home.layout():
        assert folder.is_dir() and _mode(folder) == 0o700, folder
    for secret_file in (home.service_key_file, home.sqlite_path, home.config_file):
        assert _mode(secret_file) == 0o600, secret_file
    assert instance.keyring.state == "unlocked"
    assert migrate.current_revision(instance.engine) == migrate.head_revision()
    leftovers = [p.name for p in home.root.parent.iterdir() if ".init-" in p.name]
    assert leftovers == []


def test_sqlite_runs_in_wal_mode(instance: Instance) -> None:
    with instance.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_init_twice_is_refused_and_changes_nothing(instance: Instance, clock: ManualClock) -> None:
    before = tree_digest(instance.home.root)
    with pytest.raises(InstanceExists):
        create_instance(instance.home, recovery_password=RECOVERY_PASSWORD, actor="test", clock=clock)
    assert tree_digest(instance.home.root) == before


def test_init_into_a_non_empty_folder_is_refused(tmp_path: Path, clock: ManualClock) -> None:
    root = tmp_path / "busy"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    with pytest.raises(InstanceExists, match="not empty"):
        create_instance(Home(root), recovery_password=RECOVERY_PASSWORD, actor="test", clock=clock)
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt"]


def test_init_into_an_existing_empty_folder_works(tmp_path: Path, clock: ManualClock) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    create_instance(Home(root), recovery_password=RECOVERY_PASSWORD, actor="test", clock=clock)
    assert Home(root).looks_initialised()


def test_weak_recovery_password_creates_nothing(tmp_path: Path, clock: ManualClock) -> None:
    with pytest.raises(WeakPassword):
        create_instance(Home(tmp_path / "h"), recovery_password="password123", actor="test", clock=clock)
    assert list(tmp_path.iterdir()) == []


def test_init_creates_missing_parents_and_removes_them_on_failure(tmp_path: Path, clock: ManualClock) -> None:
    target = Home(tmp_path / "a" / "b" / "home")
    with pytest.raises(BadInput):
        create_instance(
            target,
            recovery_password=RECOVERY_PASSWORD,
            database_url_option="mysql://x/y",
            actor="test",
            clock=clock,
        )
    assert list(tmp_path.iterdir()) == []
    create_instance(target, recovery_password=RECOVERY_PASSWORD, actor="test", clock=clock)
    assert target.looks_initialised()


def test_opening_a_missing_home_says_run_init(tmp_path: Path) -> None:
    with pytest.raises(InstanceNotFound, match="ams init"):
        open_instance(Home(tmp_path / "nothing"))
    assert list(tmp_path.iterdir()) == []


def test_opening_a_folder_that_is_not_an_instance(tmp_path: Path) -> None:
    with pytest.raises(InstanceNotFound, match="not an AMS instance"):
        open_instance(Home(tmp_path))


def test_missing_database_file_is_not_recreated(instance: Instance) -> None:
    home = instance.home
    instance.close()
    home.sqlite_path.unlink()
    with pytest.raises(DatabaseUnreadable, match="missing"):
        open_instance(home)
    assert not home.sqlite_path.exists()


def test_corrupt_database_is_refused_and_left_alone(instance: Instance) -> None:
    home = instance.home
    instance.close()
    home.sqlite_path.write_bytes(b"this is not a database" * 100)
    before = tree_digest(home.root)
    with pytest.raises(DatabaseUnreadable, match="cannot be read"):
        open_instance(home)
    assert tree_digest(home.root) == before


def test_schema_from_a_newer_ams_is_refused(instance: Instance) -> None:
    with instance.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_future'")
    home = instance.home
    instance.close()
    with pytest.raises(SchemaMismatch, match="newer AMS"):
        open_instance(home)


def test_bad_config_file_says_which_setting(instance: Instance) -> None:
    home = instance.home
    home.config_file.write_text("[server]\nport = 'eighty'\n")
    with pytest.raises(BadInput, match="server.port"):
        open_instance(home)
    home.config_file.write_text("[server\n")
    with pytest.raises(BadInput, match="not valid TOML"):
        open_instance(home)


# -- the same refusals through the real command ----------------------------------------


def test_cli_init_json_and_twice(tmp_path: Path) -> None:
    home = tmp_path / "h"
    first = run_ams("init", "--generate-recovery-password", "--json", home=home)
    assert first.returncode == 0, first.stderr
    made = json.loads(first.stdout)
    assert made["database"]["engine"] == "sqlite"
    assert len(made["master_key"]["fingerprint"]) == 16
    assert len(made["recovery_password"]) == 35
    before = tree_digest(home)
    again = run_ams("init", "--generate-recovery-password", home=home)
    assert again.returncode == 21
    assert again.stderr.startswith("error: an AMS instance already exists")
    assert again.stderr.count("\n") == 1 and "Traceback" not in again.stderr
    assert tree_digest(home) == before


@pytest.mark.parametrize(
    ("args", "status", "needle"),
    [
        (["status"], 20, "run `ams init"),
        (["status", "--bogus"], 2, "No such option"),
        (["apikey", "create", "--name", "x", "--role", "king"], 12, "unknown role"),
        (["frobnicate"], 2, "No such command"),
    ],
)
def test_cli_errors_are_one_line(tmp_path: Path, args: list[str], status: int, needle: str) -> None:
    result = run_ams(*args, home=tmp_path / "missing")
    assert result.returncode == status, result.stderr
    assert needle in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert not (tmp_path / "missing").exists()


def test_cli_without_home_says_how_to_give_one() -> None:
    result = run_ams("status")
    assert result.returncode == 12
    assert "pass --home DIR or set AMS_HOME" in result.stderr


def test_cli_corrupt_database(tmp_path: Path) -> None:
    home = tmp_path / "h"
    assert run_ams("init", "--generate-recovery-password", home=home).returncode == 0
    (home / "data" / "ams.db").write_bytes(os.urandom(8192))
    before = tree_digest(home)
    result = run_ams("status", home=home)
    assert result.returncode == 23
    assert result.stderr.count("\n") == 1 and "ams backup restore" in result.stderr
    assert tree_digest(home) == before


def test_cli_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = run_ams("--debug", "status", home=tmp_path / "missing")
    assert result.returncode == 20
    assert "Traceback" in result.stderr


def _as_nobody() -> list[str] | None:
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"] if setpriv else None


def test_cli_init_in_a_folder_that_is_not_writable(tmp_path: Path) -> None:
    prefix = _as_nobody()
    if prefix is None:
        pytest.skip("running as root without setpriv: cannot drop privileges")
    import subprocess
    import tempfile

    from conftest import AMS

    # pytest's own tmp folders are 0700 root: the unprivileged user needs a way in.
    base = Path(tempfile.mkdtemp(prefix="ams-ro-"))
    os.chmod(base, 0o755)
    parent = base / "locked"
    parent.mkdir()
    os.chmod(parent, 0o555)
    proc = subprocess.run(
        [*prefix, str(AMS), "init", "--home", str(parent / "home"), "--generate-recovery-password"],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
        timeout=60,
    )
    assert proc.returncode == 22, proc.stderr
    assert proc.stderr.startswith("error: cannot create") and proc.stderr.count("\n") == 1
    assert list(parent.iterdir()) == []
    shutil.rmtree(base)


def test_cli_recovery_password_from_stdin(tmp_path: Path) -> None:
    home = tmp_path / "h"
    weak = run_ams("init", "--recovery-password-stdin", home=home, input="password1\n")
    assert weak.returncode == 32 and "at least 12 characters" in weak.stderr
    assert not home.exists()
    ok = run_ams("init", "--recovery-password-stdin", home=home, input=RECOVERY_PASSWORD + "\n")
    assert ok.returncode == 0, ok.stderr
    assert RECOVERY_PASSWORD not in ok.stdout + ok.stderr


def test_cli_init_without_a_terminal_asks_for_stdin(tmp_path: Path) -> None:
    result = run_ams("init", home=tmp_path / "h", input="")
    assert result.returncode == 12 and "--password-stdin" in result.stderr
    assert not (tmp_path / "h").exists()
