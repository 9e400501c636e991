"""`ams serve --log-level` (and AMS_LOG_LEVEL): a value it does not know is a one-line usage
error before anything starts. That debug logs no secret is tests/faults/test_secrets_scan.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_ams


@pytest.mark.parametrize(("args", "env"), [(("--log-level", "loud"), {}), ((), {"AMS_LOG_LEVEL": "loud"})])
def test_an_unknown_log_level_is_refused_in_one_line(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str]
) -> None:
    result = run_ams("serve", *args, home=tmp_path / "none", env=env)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'loud' is not one of 'debug', 'info', 'warning', 'error'" in lines[0]
    assert not (tmp_path / "none").exists()
