"""Names given on the command line (issue 18 item 6): control characters and bytes that are
not UTF-8 (which reach Python as lone surrogates) are refused in one line, nothing stored."""

from __future__ import annotations

from ams import apikeys
from ams.instance import Instance
from ams.vault import regkeys
from conftest import run_ams


def test_names_with_control_characters_or_invalid_utf8_are_refused(instance: Instance) -> None:
    home = instance.home.root
    # "\udcff" is how Python spells the byte 0xff of an argument that is not UTF-8.
    for command, name in (
        ("apikey", "esc\x1b[31mred"),
        ("apikey", "not-utf8-\udcff"),
        ("regkey", "two\nlines"),
    ):
        result = run_ams(command, "create", "--name", name, home=home)
        assert result.returncode == 12, (command, result.stderr)
        assert result.stderr.startswith("error: the ")
        assert "name holds" in result.stderr
        assert result.stderr.count("\n") == 1
        assert "Traceback" not in result.stderr
    assert apikeys.list_keys(instance, include_revoked=True) == []
    assert regkeys.list_keys(instance) == []
