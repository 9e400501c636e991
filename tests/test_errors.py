from __future__ import annotations

from pathlib import Path

import ams.errors as errors

DOCS = Path(__file__).resolve().parents[1] / "docs" / "errors.md"

# Scripts match on these: a change here is a breaking change and needs a note.
PINNED = {
    "ams_error": (10, 500),
    "internal_error": (11, 500),
    "bad_input": (12, 422),
    "not_found": (13, 404),
    "already_exists": (14, 409),
    "conflict": (15, 409),
    "instance_not_found": (20, 500),
    "instance_exists": (21, 409),
    "not_writable": (22, 500),
    "database_unreadable": (23, 500),
    "schema_mismatch": (24, 500),
    "service_running": (25, 409),
    "master_key_locked": (30, 503),
    "wrong_password": (31, 403),
    "decryption_failed": (33, 422),
    "weak_password": (32, 422),
    "authentication_required": (40, 401),
    "permission_denied": (41, 403),
}


def test_codes_and_statuses_are_pinned() -> None:
    actual = {cls.code: (cls.exit_status, cls.http_status) for cls in errors.all_errors()}
    assert actual == PINNED


def test_exit_statuses_are_unique_and_in_range() -> None:
    statuses = [cls.exit_status for cls in errors.all_errors()]
    assert len(statuses) == len(set(statuses))
    assert all(10 <= s <= 99 for s in statuses)


def test_docs_carry_the_generated_table() -> None:
    assert errors.errors_table() in DOCS.read_text(encoding="utf-8")


def test_every_error_class_is_exported() -> None:
    exported = set(errors.__all__)
    for cls in errors.all_errors():
        assert cls.__name__ in exported
