"""Fixtures of the fault tests (imported by them; a second conftest.py would shadow the suite's):
the kill points, the seed, the template instance, the fork server.

`pytest tests/faults --points 500 --fault-seed 7` (or AMS_FAULT_POINTS / AMS_FAULT_SEED) for a
long run; AMS_FAULT_DEVICES and AMS_FAULT_ENTRIES size the template (default 2,000 each).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import crashlib
import pytest

DEFAULT_POINTS = 25
DEFAULT_SEED = 13


# Read at import (collection): the suite's autouse fixture clears every AMS_* variable before
# each test runs.
_ENV = {
    name: os.environ.get(name)
    for name in ("AMS_FAULT_POINTS", "AMS_FAULT_SEED", "AMS_FAULT_DEVICES", "AMS_FAULT_ENTRIES")
}


def _setting(config: pytest.Config, option: str, env: str, default: int) -> int:
    given = config.getoption(option, default=None)
    if given is not None:
        return int(given)
    return int(_ENV[env] or default)


@pytest.fixture(scope="session")
def fault_settings(pytestconfig: pytest.Config) -> dict[str, int]:
    """Kill points per operation, the seed, the template's size (options in tests/conftest.py)."""
    return {
        "points": _setting(pytestconfig, "--points", "AMS_FAULT_POINTS", DEFAULT_POINTS),
        "seed": _setting(pytestconfig, "--fault-seed", "AMS_FAULT_SEED", DEFAULT_SEED),
        "devices": int(_ENV["AMS_FAULT_DEVICES"] or 2000),
        "entries": int(_ENV["AMS_FAULT_ENTRIES"] or 2000),
    }


_TEMPLATE: dict[str, Any] = {}


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory, fault_settings: dict[str, int]) -> dict[str, Any]:
    """The populated instance, built once per run (each test module imports this fixture,
    which pytest would otherwise build once per module). RSA-2048 certificates: the vault
    does not look at the key size, and RSA-4096 generation would dominate the build."""
    from ams.vault import certificates

    if not _TEMPLATE:
        root = tmp_path_factory.mktemp("fault-template")
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(certificates, "KEY_SIZE", 2048)
            _TEMPLATE.update(
                crashlib.build_template(
                    root,
                    devices=fault_settings["devices"],
                    entries=fault_settings["entries"],
                    seed=str(fault_settings["seed"]),
                )
            )
    return dict(_TEMPLATE)


@pytest.fixture(scope="session")
def forks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[crashlib.ForkServer]:
    server = crashlib.ForkServer(Path(tmp_path_factory.mktemp("forks")))
    try:
        yield server
    finally:
        server.close()
