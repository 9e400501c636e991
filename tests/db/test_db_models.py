"""ams.db.models: the foundation tables at once, every capability's when ``Base`` is asked for."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

from sqlalchemy import inspect

import ams.db.models
from ams.db import migrate
from ams.db.engine import make_engine, sqlite_url

# In a fresh interpreter, so that no other test has loaded the capabilities already.
_PROBE = """
import json, sys
import ams.db.models
before = sorted(m for m in sys.modules if m.startswith("ams.db.models."))
from ams.db.models import Base
print(json.dumps({"before": before, "tables": sorted(Base.metadata.tables)}))
"""


def test_every_capability_is_listed() -> None:
    # A new models module goes in ams.db.models._CAPABILITIES, or the metadata Alembic
    # takes from ``ams.db.models.Base`` would miss its tables.
    modules = {m.name for m in pkgutil.iter_modules(ams.db.models.__path__)}
    assert modules - {"base", "foundation"} == set(ams.db.models._CAPABILITIES)


def test_base_from_the_package_names_every_table_the_migrations_create(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    assert loaded["before"] == ["ams.db.models.base", "ams.db.models.foundation"]

    engine = make_engine(sqlite_url(tmp_path / "ams.db", create=True))
    try:
        migrate.upgrade(engine)
        with engine.connect() as conn:
            migrated = set(inspect(conn).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()
    assert set(loaded["tables"]) == migrated
