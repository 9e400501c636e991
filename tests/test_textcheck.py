"""ams.textcheck: what text AMS stores, and names that are one line."""

from __future__ import annotations

import re

import pytest

from ams.errors import BadInput
from ams.textcheck import check_name, check_text


@pytest.mark.parametrize("value", ["", "plain", "café ☕ 𝄞", "tab\tand\nnew line", "\ufffd", "\U0010ffff"])
def test_text_passes_unchanged(value: str) -> None:
    assert check_text(value, "the field") is value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("\ud800", "the field holds U+D800 at character 1, a lone surrogate"),
        ("ab\udfff", "the field holds U+DFFF at character 3, a lone surrogate"),
        ("\ud83d\ude00", "U+D83D at character 1"),  # a pair as two code points is still not text
        ("a\x00", "the field holds a NUL character (U+0000) at character 2"),
    ],
)
def test_what_utf8_cannot_hold_or_nul_is_refused(value: str, message: str) -> None:
    with pytest.raises(BadInput, match=re.escape(message)) as refused:
        check_text(value, "the field")
    assert "\n" not in refused.value.message
    assert value not in refused.value.message  # the value is never echoed
    with pytest.raises(BadInput):
        check_name(value, "the field")


def test_non_text_is_refused() -> None:
    with pytest.raises(BadInput, match="the field must be text"):
        check_text(b"bytes", "the field")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "code"), [("a\tb", "0009"), ("a\n", "000A"), ("\r", "000D"), ("x\x7f", "007F")]
)
def test_a_name_is_one_line(value: str, code: str) -> None:
    assert check_text(value, "the name") == value
    with pytest.raises(BadInput, match=f"the name holds a control character \\(U\\+{code}\\)"):
        check_name(value, "the name")
    assert check_name("Ünïcode name ok", "the name") == "Ünïcode name ok"
