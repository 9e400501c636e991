"""An unexpected failure on a console page answers an HTML page; the API's stays JSON."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from ams import overview
from ams.api import create_app
from ams.api.routes import status as status_route
from ams.instance import Instance


def test_an_unexpected_failure_is_a_page_on_the_console_and_json_on_the_api(
    instance: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ams import users
    from ams.apikeys import Role

    users.create_user(instance, "alice", Role.ADMIN, "Violet-Harbour-Engine-58", "test")
    token = users.login(instance, "alice", "Violet-Harbour-Engine-58", None).token

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("secret detail that must not reach the client")

    monkeypatch.setattr(overview, "console_overview", broken)
    monkeypatch.setattr(status_route, "instance_status", broken)
    from ams import apikeys

    key = apikeys.create(instance, "ops", Role.ADMIN, "test").token
    with TestClient(create_app(instance), raise_server_exceptions=False) as client:
        client.cookies.set("ams_session", token)
        page = client.get("/", follow_redirects=False)
        assert page.status_code == 500 and page.headers["content-type"].startswith("text/html")
        assert "internal error" in page.text and "secret detail" not in page.text
        api = client.get("/api/v1/status", headers={"Authorization": f"Bearer {key}"})
        assert api.status_code == 500 and api.json()["error"] == "internal_error"
        assert "secret detail" not in api.text
