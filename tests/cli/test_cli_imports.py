"""Start-up cost: each command imports only what it uses (ams.cli.main's docstring says why)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ams.instance import Instance

# Heavy, and not needed to build the command tree or print help. (Typer itself may load
# pydantic to convert option values: that is not ours to avoid.)
DATABASE = ("sqlalchemy", "alembic", "ams.instance")
SERVICES = (*DATABASE, "cryptography", "ams.backup", "ams.vault")
WEB = ("fastapi", "starlette", "uvicorn", "ams.api", "ams.web")
OTHER_COMMANDS = ("ams.directory", "ams.apikeys", "botocore", "boto3")

_PROBE = """
import importlib, json, sys
report, module, *args = sys.argv[1:]
entry = importlib.import_module(module)
status = entry.run(args) if args else 0
with open(report, "w") as out:
    json.dump({"status": status, "modules": sorted(sys.modules)}, out)
"""


def _modules_after(tmp_path: Path, *args: str, module: str = "ams.cli.main") -> set[str]:
    """The modules loaded by importing ``module`` and running ``args``, in a fresh interpreter."""
    report = tmp_path / "modules.json"
    argv = [sys.executable, "-c", _PROBE, str(report), module, *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(report.read_text())
    assert data["status"] == 0, proc.stderr
    return set(data["modules"])


def _loaded(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m in prefixes or m.startswith(tuple(p + "." for p in prefixes)))


@pytest.mark.parametrize("args", [(), ("--help",), ("backup", "--help"), ("certs", "export", "--help")])
def test_the_command_tree_and_its_help_import_no_service(tmp_path: Path, args: tuple[str, ...]) -> None:
    modules = _modules_after(tmp_path, *args)
    assert _loaded(modules, SERVICES + WEB + OTHER_COMMANDS) == []


def test_backup_commands_import_neither_the_web_stack_nor_directories(
    instance: Instance, tmp_path: Path
) -> None:
    home = str(instance.home.root)
    instance.close()
    for args in (("backup", "create", "--home", home), ("backup", "list", "--home", home)):
        modules = _modules_after(tmp_path, *args)
        assert "ams.backup" in modules
        assert _loaded(modules, WEB + OTHER_COMMANDS) == [], args


def test_the_agent_stays_light(tmp_path: Path) -> None:
    modules = _modules_after(tmp_path, module="ams.agent.main")
    # It runs on devices: no database, no server code, not even the `ams` CLI's output helpers.
    server_side = (*DATABASE, "ams.vault", "ams.backup", "ams.cli._common")
    assert _loaded(modules, server_side + WEB + OTHER_COMMANDS) == []
