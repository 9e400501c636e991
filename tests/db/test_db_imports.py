"""Start-up cost: opening an instance loads neither Alembic nor models it does not read.

ams.db.revision and ams.db.models say why; tests/cli/test_cli_imports.py covers the CLI itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ams.instance import Instance

# Alembic (and Mako, which it loads) only to migrate; the PostgreSQL dialect only for a
# PostgreSQL database; other capabilities' models only for commands that read them.
NOT_FOR_OPENING = (
    "alembic",
    "mako",
    "sqlalchemy.dialects.postgresql",
    "ams.db.models.certificates",
    "ams.db.models.vault",
    "ams.db.models.directory",
)

_PROBE = """
import json, sys
from pathlib import Path
report, home, *args = sys.argv[1:]
if args:
    from ams.cli import main
    status = main.run([*args, "--home", home])
else:
    from ams.home import Home
    from ams.instance import open_instance
    open_instance(Home(Path(home))).close()
    status = 0
with open(report, "w") as out:
    json.dump({"status": status, "modules": sorted(sys.modules)}, out)
"""


def _modules_after(tmp_path: Path, home: Path, *args: str) -> set[str]:
    report = tmp_path / "modules.json"
    argv = [sys.executable, "-c", _PROBE, str(report), str(home), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(report.read_text())
    assert data["status"] == 0, proc.stderr
    return set(data["modules"])


def _loaded(modules: set[str]) -> list[str]:
    prefixes = tuple(p + "." for p in NOT_FOR_OPENING)
    return sorted(m for m in modules if m in NOT_FOR_OPENING or m.startswith(prefixes))


def test_opening_an_instance_stays_light(instance: Instance, tmp_path: Path) -> None:
    home = instance.home.root
    instance.close()
    modules = _modules_after(tmp_path, home)
    assert "ams.instance" in modules
    assert _loaded(modules) == []


def test_status_and_backup_commands_do_not_load_alembic(instance: Instance, tmp_path: Path) -> None:
    home = instance.home.root
    instance.close()
    for args in (("status",), ("backup", "list"), ("backup", "create")):
        assert _loaded(_modules_after(tmp_path, home, *args)) == [], args
