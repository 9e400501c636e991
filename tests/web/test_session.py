"""Where a login may send the browser next: a path on this server, nothing else."""

from __future__ import annotations

import pytest

from ams.web.session import safe_next


@pytest.mark.parametrize(
    "value", ["/", "/audit?event=1223&subject=user:alice", "/devices/dev_0123", "/%2F%2Fx"]
)
def test_local_paths_are_kept(value: str) -> None:
    assert safe_next(value) == value


@pytest.mark.parametrize(
    "value",
    [None, "", "//evil.example", "/\t/evil.example", "/\n/evil.example", "/\\evil.example",
     "\\\\evil.example", "https://evil.example/", "javascript:alert(1)", "audit", "/a b", "/" + "a" * 3000],
)  # fmt: skip
def test_anything_else_goes_to_the_overview(value: str | None) -> None:
    assert safe_next(value) == "/"
