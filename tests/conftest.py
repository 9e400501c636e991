"""Shared fixtures: the real `ams` command, instances in temporary homes, a movable clock."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from ams.clock import ManualClock
from ams.home import Home
from ams.instance import Instance, create_instance, open_instance
from pg import PostgresServer, find_bindir, missing_reason

AMS = Path(sys.executable).parent / "ams"

# Hypothesis: `ci` (the default) is bounded and reproducible (the same examples every run, no
# example database); HYPOTHESIS_PROFILE=long searches much further (tests/faults/).
settings.register_profile(
    "ci",
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "long", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
RECOVERY_PASSWORD = "Tangerine-Orbit-Lantern-4471"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_ams(
    *args: str,
    home: Path | None = None,
    input: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> Result:
    """Run the installed `ams` command as a user would."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AMS_")}
    full_env.update(env or {})
    argv = [str(AMS), *args]
    if home is not None:
        argv += ["--home", str(home)]
    proc = subprocess.run(argv, input=input, capture_output=True, text=True, env=full_env, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under root with its mode and content hash: to prove nothing changed."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        mode = oct(path.lstat().st_mode)
        if path.is_file():
            out[rel] = mode + ":" + hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = mode
    return out


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("AMS_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path / "ams-home")


@pytest.fixture
def instance(home: Home, clock: ManualClock) -> Iterator[Instance]:
    """An initialised instance, opened in-process, with the master key unlocked."""
    create_instance(home, recovery_password=RECOVERY_PASSWORD, actor="test", clock=clock)
    inst = open_instance(home, clock)
    try:
        yield inst
    finally:
        inst.close()


# -- PostgreSQL ------------------------------------------------------------------------------


def postgres_required() -> bool:
    """CI installs PostgreSQL: there a missing server is a failure, not a skip."""
    return any(
        os.environ.get(name, "").lower() not in ("", "0", "false")
        for name in ("AMS_TEST_REQUIRE_POSTGRES", "CI")
    )


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL cluster for the whole session (tests/pg.py), removed at the end."""
    bindir = find_bindir()
    if bindir is None:
        if postgres_required():
            pytest.fail(missing_reason())
        pytest.skip(missing_reason())
    server = PostgresServer(bindir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh empty database for one test: postgresql://ams@127.0.0.1:PORT/NAME."""
    url = pg_server.create_database()
    try:
        yield url
    finally:
        pg_server.drop_database(url)


@pytest.fixture
def pg_instance(pg_server: PostgresServer, tmp_path: Path, clock: ManualClock) -> Iterator[Instance]:
    """An initialised instance on a fresh PostgreSQL database, with the test's clock."""
    url = pg_server.create_database()
    home = Home(tmp_path / "home")
    create_instance(
        home, recovery_password=RECOVERY_PASSWORD, database_url_option=url, actor="test", clock=clock
    )
    instance = open_instance(home, clock)
    try:
        yield instance
    finally:
        instance.close()
        pg_server.drop_database(url)


# -- a populated instance for the backup and restore tests ------------------------------------


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> tuple[Home, object, object]:
    """An instance with certificates, devices and passwords, built once per module."""
    from backup_support import golden_once

    return golden_once(tmp_path_factory)


@pytest.fixture
def populated(golden: tuple[Home, object, object], tmp_path: Path) -> Iterator[Instance]:
    """A copy of the golden instance, open, with a clock at the golden time."""
    from backup_support import copy_home

    home, _fleet, now = golden
    instance = open_instance(copy_home(home, tmp_path / "home"), ManualClock(now))  # type: ignore[arg-type]
    try:
        yield instance
    finally:
        instance.close()


# -- the options of the fault tests (tests/faults/faultfixtures.py) ---------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("faults", "tests/faults: kill points and their seed")
    group.addoption("--points", type=int, default=None, help="kill points per operation (default 25)")
    group.addoption("--fault-seed", type=int, default=None, help="seed of the kill points (default 13)")
