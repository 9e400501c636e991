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
    "directory_attribute_absent": (16, 422),
    "directory_value_exists": (17, 409),
    "instance_not_found": (20, 500),
    "instance_exists": (21, 409),
    "not_writable": (22, 500),
    "database_unreadable": (23, 500),
    "schema_mismatch": (24, 500),
    "service_running": (25, 409),
    "device_write_not_allowed": (26, 403),
    "directory_binding_invalid": (27, 422),
    "agent_directory_failed": (28, 502),
    "master_key_locked": (30, 503),
    "wrong_password": (31, 403),
    "decryption_failed": (33, 422),
    "service_workers_failing": (34, 500),
    "weak_password": (32, 422),
    "authentication_required": (40, 401),
    "permission_denied": (41, 403),
    "request_too_large": (42, 413),
    "method_not_allowed": (43, 405),
    "password_version_out_of_range": (44, 422),
    "password_versions_exhausted": (45, 409),
    "too_many_requests": (46, 429),
    "pfx_invalid": (50, 422),
    "pfx_no_private_key": (51, 422),
    "pfx_key_mismatch": (52, 422),
    "certificate_key_unsupported": (53, 422),
    "certificate_key_absent": (54, 409),
    "password_undecryptable": (55, 422),
    "device_pending_approval": (56, 403),
    "rollback_window_closed": (57, 409),
    "registration_key_invalid": (58, 401),
    "registration_key_refused": (59, 403),
    "device_token_invalid": (60, 401),
    "device_disabled": (61, 403),
    "directory_not_found": (65, 404),
    "snapshot_not_found": (66, 404),
    "snapshot_limit_exceeded": (67, 409),
    "directory_unavailable": (68, 503),
    "unsupported_operation": (69, 409),
    "snapshot_too_old": (70, 422),
    "not_primary_region": (71, 409),
    "snapshot_corrupt": (72, 422),
    "ldif_invalid": (73, 422),
    "directory_entry_not_found": (74, 404),
    "backup_invalid": (80, 422),
    "backup_unsafe": (81, 422),
    "backup_failed": (82, 500),
    "snapshot_store_failed": (86, 507),
    "restore_failed": (83, 500),
    "backup_unsupported": (84, 422),
    "recovery_password_required": (85, 403),
    "backup_unrecoverable": (88, 422),
    "agent_state_not_private": (75, 500),
    "agent_not_registered": (90, 500),
    "agent_server_unreachable": (91, 502),
    "agent_server_refused": (92, 502),
    "agent_password_not_set": (93, 500),
    "agent_server_answer_invalid": (94, 502),
    "offsite_target_not_found": (47, 404),
    "offsite_access_denied": (48, 502),
    "offsite_bucket_missing": (49, 502),
    "offsite_unreachable": (62, 504),
    "offsite_object_invalid": (63, 422),
    "offsite_copy_failed": (64, 502),
    "offsite_lock_unavailable": (77, 409),
    "offsite_credentials_missing": (78, 422),
    "offsite_object_not_found": (79, 404),
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
