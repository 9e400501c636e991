"""The documentation a clone carries points only at what a clone has.

Every relative link in README.md, CONTRIBUTING.md and docs/*.md names a file of the
repository (and, with an anchor, a heading of that file); every repository path quoted in
backticks exists; the README's documentation table lists every docs/*.md; and no document
sends the reader to a design document that is not in the repository.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
DOCUMENTS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *DOCS]

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_CODE_BLOCK = re.compile(r"^```.*?^```", re.S | re.M)
# A path in backticks; one with a placeholder (`src/ams/cli/<group>_cmd.py`) or a glob is skipped.
_QUOTED_PATH = re.compile(r"`((?:src|docs|tests|scripts|bench|\.ci)/[^`\s*<>]*)`")


def _prose(path: Path) -> str:
    """The text without fenced code blocks (a shell example is not a link)."""
    return _CODE_BLOCK.sub("", path.read_text(encoding="utf-8"))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]{2,}|`", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    for line in _prose(path).splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if not match:
            continue
        slug = _slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_documents_exist() -> None:
    for path in DOCUMENTS:
        assert path.is_file(), _name(path)
    assert (ROOT / "docs" / "architecture.md") in DOCS


@pytest.mark.parametrize("document", DOCUMENTS, ids=_name)
def test_every_relative_link_points_at_a_file_of_the_repository(document: Path) -> None:
    broken = []
    for target in _LINK.findall(_prose(document)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (document.parent / file_part).resolve() if file_part else document
        if not linked.is_relative_to(ROOT) or not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {_name(linked)}")
    assert broken == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=_name)
def test_every_quoted_repository_path_exists(document: Path) -> None:
    missing = [p for p in _QUOTED_PATH.findall(_prose(document)) if not (ROOT / p).exists()]
    assert missing == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=_name)
def test_no_document_points_at_a_design_document_a_clone_lacks(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    assert "DESIGN.md" not in text
    assert "beside this repository" not in text
    assert not re.search(r"later issues?\b", text, re.I)


def test_the_readme_table_lists_every_document_in_docs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = re.search(r"^## Documentation\n(.*?)(?=^## )", readme, re.S | re.M)
    assert table is not None
    rows = [line for line in table.group(1).splitlines() if line.startswith("| [")]
    listed = {target for row in rows for target in _LINK.findall(row)}
    assert listed == {f"docs/{p.name}" for p in DOCS}
    assert "[CONTRIBUTING.md](CONTRIBUTING.md)" in readme
