"""Helpers the vault tests share: an in-process agent that speaks the agent API as ams-agent does.

(No tests here: a module of helpers beside conftest.py, like pg.py and server.py.)
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ams.crypto import certs
from ams.crypto.blob import encrypt_password
from ams.instance import Instance
from ams.vault import certificates, regkeys


@pytest.fixture(autouse=True)
def _small_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """RSA-2048 certificates in these tests: the vault does not look at the key size."""
    monkeypatch.setattr(certificates, "KEY_SIZE", 2048)


def make_blob(
    pem: str, account: str, password: str, version: int, created_at: str = "2026-01-01T00:00:00+00:00"
) -> str:
    """What an agent sends: the password encrypted to the certificate, base64."""
    plaintext = json.dumps(
        {"account": account, "password": password, "created_at": created_at, "version": version}
    ).encode()
    return base64.b64encode(encrypt_password(certs.certificate_from_pem(pem), plaintext)).decode()


@dataclass
class Agent:
    """A device, registered through the API, that rotates like ams-agent (without setting anything)."""

    client: TestClient
    device_id: str
    token: str
    version: int | None = None
    passwords: dict[int, str] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def check(self, version: int | None | str = "mine") -> Any:
        sent = self.version if version == "mine" else version
        params = {"version": "" if sent is None else str(sent)}
        return self.client.get("/api/v1/agent/password", params=params, headers=self.headers)

    def advice(self) -> dict[str, Any]:
        response = self.check()
        assert response.status_code == 200, response.text
        return response.json()

    def report(
        self,
        advice: dict[str, Any],
        *,
        account: str | None = None,
        version: int | None = None,
        pem: str | None = None,
    ) -> Any:
        account = account or advice["policy"]["account"]
        version = version or advice["next_version"]
        password = secrets.token_urlsafe(15)
        blob = make_blob(pem or advice["certificate"]["pem"], account, password, version)
        response = self.client.post(
            "/api/v1/agent/password",
            json={"account": account, "version": version, "blob": blob},
            headers=self.headers,
        )
        if response.status_code == 201:
            self.passwords[version] = password
        return response

    def rotate(self) -> dict[str, Any]:
        """GET, and POST when told to rotate; then the device "sets" it (keeps the version)."""
        advice = self.advice()
        if advice["rotate"]:
            stored = self.report(advice)
            assert stored.status_code == 201, stored.text
            self.version = stored.json()["version"]
        return advice


def register(client: TestClient, instance: Instance, name: str, *, key: str | None = None) -> Agent:
    if key is None:
        key = regkeys.create(instance, f"key-for-{name}-{secrets.token_hex(3)}", "test").key
    response = client.post("/api/v1/agent/register", json={"registration_key": key, "name": name})
    assert response.status_code == 201, response.text
    body = response.json()
    return Agent(client, body["device_id"], body["token"])
