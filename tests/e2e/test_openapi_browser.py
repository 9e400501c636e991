"""GET /docs on a real `ams serve`: the OpenAPI browser, served whole from the package."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from conftest import run_ams
from server import Server


class _References(HTMLParser):
    """Every src= and href= of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def test_docs_page_and_every_asset_it_references_are_served_locally(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert run_ams("init", "--generate-recovery-password", home=home).returncode == 0
    with Server(home) as server, server.client() as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "SwaggerUIBundle" in page.text
        # No absolute URL at all: nothing the browser loads comes from another host.
        assert re.findall(r"(?:https?:)?//[\w.-]+", page.text) == []

        parser = _References()
        parser.feed(page.text)
        spec = re.search(r"url: '([^']+)'", page.text)
        assert spec is not None
        assets = [*parser.urls, spec.group(1)]
        assert any(u.endswith(".js") for u in assets) and any(u.endswith(".css") for u in assets)
        for url in assets:
            assert url.startswith("/"), url
            response = client.get(url)
            assert response.status_code == 200, url
            assert len(response.content) > 100, url
        assert client.get(spec.group(1)).json()["info"]["title"] == "AMS"
