"""Fixtures of the fault tests: the kill points, the seed, the template instance, the fork server.

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


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("faults")
    group.addoption("--points", type=int, default=None, help="kill points per operation (default 25)")
    group.addoption("--fault-seed", type=int, default=None, help="seed of the kill points (default 13)")


def _setting(config: pytest.Config, option: str, env: str, default: int) -> int:
    given = config.getoption(option, default=None)
    if given is not None:
        return int(given)
    return int(os.environ.get(env) or default)


def pytest_configure(config: pytest.Config) -> None:
    # Read now: the suite's autouse fixture clears every AMS_* variable before each test.
    config.stash[_KEY] = {
        "points": _setting(config, "--points", "AMS_FAULT_POINTS", DEFAULT_POINTS),
        "seed": _setting(config, "--fault-seed", "AMS_FAULT_SEED", DEFAULT_SEED),
        "devices": int(os.environ.get("AMS_FAULT_DEVICES") or 2000),
        "entries": int(os.environ.get("AMS_FAULT_ENTRIES") or 2000),
    }


_KEY = pytest.StashKey[dict[str, int]]()


@pytest.fixture(scope="session")
def fault_settings(pytestconfig: pytest.Config) -> dict[str, int]:
    return pytestconfig.stash[_KEY]


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory, fault_settings: dict[str, int]) -> dict[str, Any]:
    """The populated instance, built once per session (RSA-2048 certificates: the vault does
    not look at the key size, and RSA-4096 generation would dominate the build)."""
    from ams.vault import certificates

    root = tmp_path_factory.mktemp("fault-template")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(certificates, "KEY_SIZE", 2048)
        return crashlib.build_template(
            root,
            devices=fault_settings["devices"],
            entries=fault_settings["entries"],
            seed=str(fault_settings["seed"]),
        )


@pytest.fixture(scope="session")
def forks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[crashlib.ForkServer]:
    server = crashlib.ForkServer(Path(tmp_path_factory.mktemp("forks")))
    try:
        yield server
    finally:
        server.close()
