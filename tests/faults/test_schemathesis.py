"""Schemathesis against the OpenAPI document the API serves (/openapi.json of the ASGI app
`ams serve` runs), every operation called as an admin key and as a reader key: no answer is
a 5xx and every answer matches the document (its schema, for the statuses it describes).

Bounded in CI: a few examples per operation, and the two operations that are slow by design
(POST /api/v1/certificates generates an RSA-4096 key, POST /api/v1/backups writes a backup)
only with ``AMS_FAULT_LONG=1``, which also searches much further.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from faults_support import LONG, record
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from ams import apikeys
from ams.api import create_app
from ams.apikeys import Role
from ams.home import Home
from ams.instance import Instance, open_instance

AREA = "fuzzing"
SLOW = {("POST", "/api/v1/certificates"), ("POST", "/api/v1/backups")}
EXAMPLES = 200 if LONG else 3
_calls: dict[str, int] = {"calls": 0}


@pytest.fixture(scope="module")
def served(
    golden: tuple[Home, object, object], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Instance, Any, dict[str, str]]]:
    from ams.clock import ManualClock
    from backup_support import copy_home

    golden_home, _fleet, now = golden
    home = copy_home(golden_home, tmp_path_factory.mktemp("schemathesis") / "home")  # type: ignore[arg-type]
    instance = open_instance(home, ManualClock(now))  # type: ignore[arg-type]
    tokens = {
        "admin": apikeys.create(instance, "st-admin", Role.ADMIN, "test").token,
        "reader": apikeys.create(instance, "st-reader", Role.READER, "test").token,
    }
    try:
        yield instance, create_app(instance), tokens
    finally:
        instance.close()
        record(
            AREA,
            "Schemathesis: every REST operation as admin and as reader",
            _calls["calls"],
            "no 5xx; every answer matches the OpenAPI document",
            None,
        )


def test_api_conforms_to_its_openapi_document(served: tuple[Instance, Any, dict[str, str]]) -> None:
    _instance, app, tokens = served
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = 0
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if not LONG and (operation.method.upper(), operation.path) in SLOW:
            continue
        operations += 1

        @given(operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            for role in ("reader", "admin"):
                _calls["calls"] += 1
                case.call_and_validate(
                    headers={"Authorization": f"Bearer {tokens[role]}"},
                    checks=[not_a_server_error, response_schema_conformance],
                )

        try:
            check()
        except Exception as exc:  # noqa: BLE001 - every operation is tried; all failures shown
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert operations >= 40
    assert not failures, "\n\n".join(failures)
