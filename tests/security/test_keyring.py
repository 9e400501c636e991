"""The master key on a machine: service unlock, locked mode, recovery unlock, new recovery password."""

from __future__ import annotations

import base64
import os
import stat

import pytest

from ams import audit
from ams.db.models import KeyWrapping
from ams.errors import Conflict, MasterKeyLocked, WeakPassword, WrongPassword
from ams.instance import Instance, open_instance
from conftest import RECOVERY_PASSWORD

NEW_PASSWORD = "Quartz-Meadow-Violin-8812"


def _wrappings(instance: Instance) -> dict[str, str]:
    with instance.session() as session:
        return {row.kind: row.wrapping for row in session.query(KeyWrapping)}


def _reopen(instance: Instance) -> Instance:
    instance.close()
    return open_instance(instance.home, instance.clock)


def test_lost_service_key_locks_and_recovery_unlocks(instance: Instance) -> None:
    fingerprint = instance.keyring.fingerprint
    instance.home.service_key_file.unlink()
    locked = _reopen(instance)
    try:
        assert locked.keyring.state == "locked"
        assert "no service key" in (locked.keyring.lock_reason or "")
        with pytest.raises(MasterKeyLocked, match="ams security unlock"):
            _ = locked.keyring.box
        locked.keyring.unlock_with_recovery_password(RECOVERY_PASSWORD, "test")
        assert locked.keyring.state == "unlocked"
        assert locked.keyring.fingerprint == fingerprint
        key_file = locked.home.service_key_file
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    finally:
        locked.close()
    again = open_instance(instance.home, instance.clock)
    try:
        assert again.keyring.state == "unlocked"
    finally:
        again.close()


def test_a_foreign_service_key_locks(instance: Instance) -> None:
    instance.home.service_key_file.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
    locked = _reopen(instance)
    try:
        assert locked.keyring.state == "locked"
        assert "does not open" in (locked.keyring.lock_reason or "")
    finally:
        locked.close()


def test_wrong_recovery_password_changes_nothing_but_is_audited(instance: Instance) -> None:
    instance.home.service_key_file.unlink()
    locked = _reopen(instance)
    try:
        before = _wrappings(locked)
        with pytest.raises(WrongPassword, match="nothing was changed"):
            locked.keyring.unlock_with_recovery_password("Not-The-Right-One-1234", "test")
        assert _wrappings(locked) == before
        assert not locked.home.service_key_file.exists()
        assert [p.name for p in locked.home.keys_dir.iterdir()] == []
        with locked.session() as session:
            failures = audit.list_events(session, event_id=audit.Event.MASTER_KEY_UNLOCK_FAILED)
        assert len(failures) == 1 and failures[0].outcome == "failure"
    finally:
        locked.close()


def test_new_recovery_password_replaces_the_old(instance: Instance) -> None:
    first_set = instance.keyring.recovery_password_set_at()
    instance.clock.advance(__import__("datetime").timedelta(days=1))
    instance.keyring.set_recovery_password(NEW_PASSWORD, "test")
    assert instance.keyring.recovery_password_set_at() > first_set
    with instance.session() as session:
        assert session.query(KeyWrapping).filter_by(kind="recovery").count() == 1
    instance.home.service_key_file.unlink()
    locked = _reopen(instance)
    try:
        with pytest.raises(WrongPassword):
            locked.keyring.unlock_with_recovery_password(RECOVERY_PASSWORD, "test")
        locked.keyring.unlock_with_recovery_password(NEW_PASSWORD, "test")
        assert locked.keyring.state == "unlocked"
    finally:
        locked.close()


def test_setting_a_weak_recovery_password_changes_nothing(instance: Instance) -> None:
    before = _wrappings(instance)
    with pytest.raises(WeakPassword):
        instance.keyring.set_recovery_password("letmein2024!", "test")
    assert _wrappings(instance) == before


def test_setting_the_recovery_password_needs_the_master_key(instance: Instance) -> None:
    instance.home.service_key_file.unlink()
    locked = _reopen(instance)
    try:
        before = _wrappings(locked)
        with pytest.raises(MasterKeyLocked):
            locked.keyring.set_recovery_password(NEW_PASSWORD, "test")
        assert _wrappings(locked) == before
    finally:
        locked.close()


def test_service_key_from_the_environment(instance: Instance, monkeypatch: pytest.MonkeyPatch) -> None:
    """AMS_SERVICE_KEY wins over the file; unlocking re-wraps under it and writes no file."""
    instance.home.service_key_file.unlink()
    env_key = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("AMS_SERVICE_KEY", env_key)
    locked = _reopen(instance)
    try:
        assert locked.keyring.state == "locked"
        assert locked.keyring.source.kind == "environment"
        locked.keyring.unlock_with_recovery_password(RECOVERY_PASSWORD, "test")
        assert not locked.home.service_key_file.exists()
    finally:
        locked.close()
    again = open_instance(instance.home, instance.clock)
    try:
        assert again.keyring.state == "unlocked"
    finally:
        again.close()


def test_systemd_credential(instance: Instance, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "ams-service-key").write_bytes(instance.home.service_key_file.read_bytes())
    instance.home.service_key_file.unlink()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    reopened = _reopen(instance)
    try:
        assert reopened.keyring.source.kind == "credential"
        assert reopened.keyring.state == "unlocked"
    finally:
        reopened.close()


def test_malformed_service_key_locks_with_a_reason(instance: Instance) -> None:
    instance.home.service_key_file.write_text("not base64 at all\n")
    locked = _reopen(instance)
    try:
        assert locked.keyring.state == "locked"
        assert "malformed" in (locked.keyring.lock_reason or "")
    finally:
        locked.close()


def test_unlock_without_the_services_credential_is_refused(instance: Instance, monkeypatch, tmp_path) -> None:
    """The service got its key from a systemd credential; a shell without it must not
    silently re-key the instance to a file the service never reads."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "ams-service-key").write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    instance.home.service_key_file.unlink()
    as_service = _reopen(instance)
    as_service.keyring.unlock_with_recovery_password(RECOVERY_PASSWORD, "test")  # wraps under the credential
    as_service.close()
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    shell = open_instance(instance.home, instance.clock)
    try:
        assert shell.keyring.state == "locked"
        before = _wrappings(shell)
        with pytest.raises(Conflict, match="systemd credential"):
            shell.keyring.unlock_with_recovery_password(RECOVERY_PASSWORD, "test")
        assert _wrappings(shell) == before and not shell.home.service_key_file.exists()
        shell.keyring.unlock_with_recovery_password(RECOVERY_PASSWORD, "test", move_to_key_file=True)
        assert shell.home.service_key_file.exists()
    finally:
        shell.close()
