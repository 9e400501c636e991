"""A throwaway PostgreSQL cluster for the test suite.

``PostgresServer.start()`` runs ``initdb`` and ``pg_ctl start`` in a temporary folder, as
an unprivileged user when we run as root (PostgreSQL refuses to run as root), listening
on 127.0.0.1 on a free port with trust authentication, and a unix socket in a folder that
user owns. ``create_database()`` gives each test a fresh, empty database owned by the
non-superuser role ``ams``, as ``postgresql://ams@127.0.0.1:PORT/NAME``; ``stop()`` stops
the server and removes every file.

The binaries are looked up with ``$AMS_TEST_PG_BINDIR``, then on ``PATH``, then in
``/usr/lib/postgresql/*/bin`` (Debian's ``postgresql`` package), newest version first.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

__all__ = [
    "APP_ROLE",
    "PostgresError",
    "PostgresServer",
    "find_bindir",
    "free_port",
    "missing_reason",
]

SUPERUSER = "postgres"
APP_ROLE = "ams"
_TOOLS = ("initdb", "pg_ctl", "postgres")
_DEBIAN_GLOB = "/usr/lib/postgresql/*/bin"


class PostgresError(RuntimeError):
    """The test cluster could not be created, started or used."""


def _has_tools(directory: Path) -> bool:
    return all(os.access(directory / tool, os.X_OK) for tool in _TOOLS)


def _version_key(directory: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin -> (15,)
    return tuple(int(n) for n in re.findall(r"\d+", directory.parent.name)) or (0,)


def find_bindir() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres, or None when PostgreSQL is absent."""
    override = os.environ.get("AMS_TEST_PG_BINDIR")
    if override:
        directory = Path(override)
        if not _has_tools(directory):
            raise PostgresError(f"AMS_TEST_PG_BINDIR={override} lacks one of {', '.join(_TOOLS)}")
        return directory
    on_path = shutil.which("pg_ctl")
    if on_path:
        # Through symlinks (/usr/local/bin/pg_ctl -> /usr/lib/postgresql/15/bin/pg_ctl): the
        # real folder holds the matching initdb and postgres.
        for candidate in (Path(on_path).resolve().parent, Path(on_path).parent):
            if _has_tools(candidate):
                return candidate
    candidates = [Path(p) for p in Path("/").glob(_DEBIAN_GLOB.lstrip("/"))]
    for directory in sorted(candidates, key=_version_key, reverse=True):
        if _has_tools(directory):
            return directory
    return None


def missing_reason() -> str:
    return (
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH nor in "
        f"{_DEBIAN_GLOB}: install the `postgresql` package (or set AMS_TEST_PG_BINDIR) to run "
        "the PostgreSQL tests"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_account() -> tuple[int, int] | None:
    """(uid, gid) to run the server as, or None to run as ourselves (not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    raise PostgresError("running as root and neither a `postgres` nor a `nobody` user exists")


def _base_dir(account: tuple[int, int] | None) -> str:
    """The temporary folder, if the server's account can reach it; else /tmp."""
    base = tempfile.gettempdir()
    if account is None:
        return base
    for folder in (Path(base), *Path(base).parents):
        if not folder.stat().st_mode & 0o001:  # others may not traverse it
            return "/tmp"
    return base


@dataclass
class PostgresServer:
    bindir: Path
    port: int = 0
    root: Path | None = None
    _account: tuple[int, int] | None = None
    _running: bool = False
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # -- paths ------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.root is not None
        return self.root / "socket"

    @property
    def log_file(self) -> Path:
        assert self.root is not None
        return self.root / "server.log"

    # -- running the tools ------------------------------------------------------------

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": f"{self.bindir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "LC_ALL": "C",
            "LANG": "C",
            "TZ": "UTC",
        }
        uid, gid = self._account if self._account is not None else (None, None)
        assert self.root is not None
        return subprocess.run(
            [str(self.bindir / argv[0]), *argv[1:]],
            cwd=self.root,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            user=uid,
            group=gid,
            extra_groups=[] if uid is not None else None,
        )

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- life cycle -------------------------------------------------------------------

    def start(self, attempts: int = 3) -> None:
        """initdb and start; retries on another port if the chosen one was taken meanwhile."""
        self._account = _server_account()
        self.root = Path(tempfile.mkdtemp(prefix="ams-test-pg-", dir=_base_dir(self._account)))
        try:
            if self._account is not None:
                os.chown(self.root, *self._account)
            self.socket_dir.mkdir(mode=0o700)
            if self._account is not None:
                os.chown(self.socket_dir, *self._account)
            self._initdb()
            for attempt in range(1, attempts + 1):
                self.port = free_port()
                if self._pg_ctl_start():
                    break
                if attempt == attempts:
                    raise PostgresError(
                        f"pg_ctl start failed {attempts} times; server log:\n{self._log_tail()}"
                    )
            self._running = True
            self._wait_ready()
            with self.admin_connection() as conn:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(APP_ROLE)))
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)  # a safety net; the fixture stops it first

    def _initdb(self) -> None:
        proc = self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        )
        if proc.returncode != 0:
            raise PostgresError(f"initdb failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": "50",
            "shared_buffers": "16MB",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "timezone": "'UTC'",
            "log_min_messages": "warning",
        }
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# ams test suite\n")
            conf.writelines(f"{k} = {v}\n" for k, v in settings.items())

    def _pg_ctl_start(self) -> bool:
        proc = self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-o",
            f"-p {self.port}",
            "-w",
            "-t",
            "60",
            "start",
        )
        return proc.returncode == 0

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.admin_connection():
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise PostgresError(
                        f"the server does not accept connections: {exc}\n{self._log_tail()}"
                    ) from exc
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop the server (if running) and remove its files. Safe to call twice."""
        if self.root is None:
            return
        if self._running and self.data_dir.is_dir():
            proc = self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop", timeout=60)
            if proc.returncode != 0:  # pragma: no cover - last resort
                self._kill_postmaster()
        self._running = False
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def _kill_postmaster(self) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, 9)

    # -- using it ---------------------------------------------------------------------

    def url(self, dbname: str, user: str = APP_ROLE) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def admin_connection(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        """A superuser connection in autocommit mode; use it in a ``with`` block."""
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=SUPERUSER,
            dbname=dbname,
            autocommit=True,
            connect_timeout=10,
        )

    def create_database(self, prefix: str = "ams_test") -> str:
        """A new empty database owned by the ``ams`` role; returns its URL."""
        name = f"{prefix}_{os.getpid()}_{next(self._counter)}"
        with self.admin_connection() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(APP_ROLE))
            )
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with self.admin_connection() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
