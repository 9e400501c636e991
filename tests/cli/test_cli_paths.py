"""Every path argument of every command: a wrong path is one `error:` line with a stable
status, never a traceback or an "internal error", and nothing is changed (issue 17, item 8).

The commands run in-process through the same entry points as the installed `ams` and
`ams-agent` (ams.cli.main.run, ams.agent.main.run); one case also runs the real command.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

from ams.agent import main as agent_main
from ams.cli import main as cli_main
from ams.clock import ManualClock
from ams.errors import BadInput, NotFound, NotWritable
from ams.home import Home
from ams.instance import create_instance
from conftest import RECOVERY_PASSWORD, run_ams, tree_digest

BAD, MISSING, FAILED = BadInput.exit_status, NotFound.exit_status, 82  # 82: backup_failed

# (command line, status, words the error line holds). {home}: a real instance; {o}: a folder
# holding `afile` (a file) and `adir` (a folder); nothing else exists there.
CASES: list[tuple[str, int, str]] = [
    # --home: a file, or below a file
    ("status --home {o}/afile", BAD, "is a file, not a folder"),
    ("status --home {o}/afile/sub", BAD, "is a file, not a folder"),
    ("init --home {o}/afile --generate-recovery-password", BAD, "is a file, not a folder"),
    ("backup restore {o}/afile --home {o}/afile --yes", BAD, "is a file, not a folder"),
    ("backup restore {o}/afile --home {o}/afile/sub --yes", BAD, "is a file, not a folder"),
    ("backup verify {o}/afile --home {o}/afile", BAD, "is a file, not a folder"),
    ("backup list --home {o}/afile", BAD, "is a file, not a folder"),
    ("serve --home {o}/afile", BAD, "is a file, not a folder"),
    ("security unlock --password-stdin --home {o}/afile", BAD, "is a file, not a folder"),
    ("db upgrade --home {o}/afile", BAD, "is a file, not a folder"),
    # backup files
    ("backup verify {o}/missing.amsbak", MISSING, "does not exist"),
    ("backup verify {o}/adir", BAD, "is a folder"),
    ("backup restore {o}/missing.amsbak --home {home} --yes", MISSING, "does not exist"),
    ("backup restore {o}/adir --home {home} --yes", BAD, "is a folder"),
    # backup destinations
    ("backup create --dest {o}/afile --home {home}", FAILED, "not a folder"),
    ("backup create --dest {o}/afile/sub --home {home}", FAILED, "afile"),
    ("backup schedule set --dest {o}/afile --home {home}", BAD, "is a file, not a folder"),
    ("backup schedule set --dest {o}/missing --home {home}", BAD, "--create"),
    # PFX files
    ("certs import {o}/missing.pfx --scope agent --password-stdin --home {home}", MISSING, "does not exist"),
    ("certs import {o}/adir --scope agent --password-stdin --home {home}", BAD, "is a folder"),
    ("certs import {o}/afile/x.pfx --scope agent --password-stdin --home {home}", BAD, "is a file"),
    ("certs export 0123456789abcdef --out {o}/adir --password-stdin --home {home}", BAD, "is a folder"),
    ("certs export 0123456789abcdef --out {o}/afile/x.pfx --password-stdin --home {home}", BAD, "is a file"),
    (
        "certs export 0123456789abcdef --out {o}/missing/x.pfx --password-stdin --home {home}",
        MISSING,
        "does not exist",
    ),
    # LDIF files
    ("directory import d-0123456789 {o}/missing.ldif --home {home}", MISSING, "does not exist"),
    ("directory import d-0123456789 {o}/adir --home {home}", BAD, "is a folder"),
    ("directory import d-0123456789 {o}/afile/x.ldif --home {home}", BAD, "is a file"),
    ("directory export d-0123456789 --out {o}/adir --home {home}", BAD, "is a folder"),
    ("directory export d-0123456789 --out {o}/afile/x.ldif --home {home}", BAD, "is a file"),
    ("directory export d-0123456789 --out {o}/missing/x.ldif --home {home}", MISSING, "does not exist"),
    # ams-agent's state file
    ("agent: run --once --state {o}/adir --setter file:{o}/pw", BAD, "adir"),
    ("agent: run --once --state {o}/afile/x --setter file:{o}/pw", BAD, "afile"),
    (
        "agent: register --server http://127.0.0.1:9 --registration-key-stdin --state {o}/adir",
        BAD,
        "is a folder",
    ),
    (
        "agent: register --server http://127.0.0.1:9 --registration-key-stdin --state {o}/afile/x",
        BAD,
        "is a file",
    ),
]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One instance for every case (none of them may change it)."""
    root = tmp_path_factory.mktemp("paths") / "home"
    create_instance(Home(root), recovery_password=RECOVERY_PASSWORD, actor="test", clock=ManualClock())
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "afile").write_text("not a folder, not an archive\n")
    (folder / "adir").mkdir()
    return folder


@pytest.mark.parametrize(("line", "status", "words"), CASES, ids=[c[0].split(" {")[0] for c in CASES])
def test_a_wrong_path_is_one_line_and_changes_nothing(
    home: Path,
    outside: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    line: str,
    status: int,
    words: str,
) -> None:
    before_outside = tree_digest(outside)
    before_home = {k: v for k, v in tree_digest(home).items() if not k.startswith("data/")}
    args = line.format(o=outside, home=home).split()
    if args[0] == "agent:":
        monkeypatch.setattr(sys, "stdin", io.StringIO("rk_0123456789abcdef.Not-A-Real-Key-1234\n"))
        got = agent_main.run(args[1:])
    else:
        monkeypatch.setattr(sys, "stdin", io.StringIO("Not-The-Password-1234\n"))
        got = cli_main.run(args)
    err = capsys.readouterr().err
    assert got == status, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert words in err and "internal error" not in err and "Traceback" not in err
    assert tree_digest(outside) == before_outside
    assert {k: v for k, v in tree_digest(home).items() if not k.startswith("data/")} == before_home


def test_restore_into_a_file_through_the_real_command(tmp_path: Path) -> None:
    """The reported case, as the user ran it: a traceback (NotADirectoryError) before."""
    a_file = tmp_path / "home"
    a_file.write_text("x\n")
    archive = tmp_path / "some.amsbak"
    archive.write_bytes(b"\0" * 1024)
    got = run_ams("backup", "restore", str(archive), "--yes", home=a_file)
    assert got.returncode == BAD
    assert got.stderr == f"error: --home {a_file} is a file, not a folder; give the instance folder\n"
    assert a_file.read_text() == "x\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes anything: needs an ordinary user")
def test_unreadable_and_unwritable_paths(home: Path, outside: Path) -> None:
    secret = outside / "locked.pfx"
    secret.write_bytes(b"x")
    secret.chmod(0)
    locked = outside / "locked"
    locked.mkdir(mode=0o500)
    for args, status in (
        (["certs", "import", str(secret), "--scope", "agent", "--password-stdin"], BAD),
        (["directory", "import", "d-0123456789", str(secret)], BAD),
        (["directory", "export", "d-0123456789", "--out", str(locked / "x.ldif")], NotWritable.exit_status),
        (["backup", "schedule", "set", "--dest", str(locked)], NotWritable.exit_status),
    ):
        got = run_ams(*args, home=home, input="\n")
        assert got.returncode == status, got.stderr
        assert got.stderr.count("\n") == 1 and got.stderr.startswith("error: ")
