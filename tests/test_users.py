"""Console users and sessions (ams.users): hashes, logins, expiry, disable, audit."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from ams import audit, users
from ams.apikeys import Role
from ams.clock import ManualClock
from ams.db.models.console import ConsoleSession, ConsoleUser
from ams.errors import (
    AlreadyExists,
    AuthenticationRequired,
    BadInput,
    NotFound,
    PermissionDenied,
    WeakPassword,
)
from ams.instance import Instance
from conftest import RECOVERY_PASSWORD, run_ams

PASSWORD = "Violet-Harbour-Engine-58"


def test_a_user_logs_in_and_the_database_keeps_no_secret(instance: Instance) -> None:
    users.create_user(instance, "alice", Role.ADMIN, PASSWORD, "test")
    logged = users.login(instance, "alice", PASSWORD, "127.0.0.1")
    with instance.session() as session:
        row = session.scalar(select(ConsoleUser))
        record = session.scalar(select(ConsoleSession))
    assert row.password_hash.startswith("$argon2id$") and PASSWORD not in row.password_hash
    assert record.token_hash != logged.token and logged.token not in record.token_hash
    opened = users.open_session(instance, logged.token, Role.ADMIN)
    assert opened.user.name == "alice" and opened.csrf_secret == logged.session.csrf_secret
    with instance.session() as session:
        events = audit.list_events(session)
    dumped = json.dumps([e.to_dict() for e in events])
    assert PASSWORD not in dumped and logged.token not in dumped
    assert [e.event_id for e in events][-2:] == [audit.Event.USER_CREATED, audit.Event.USER_LOGGED_IN]


def test_every_refusal_says_the_same_and_is_audited(instance: Instance) -> None:
    users.create_user(instance, "alice", Role.READER, PASSWORD, "test")
    messages = set()
    for name, password in (("alice", "wrong-password-123"), ("nobody", PASSWORD), ("bad name", PASSWORD)):
        with pytest.raises(AuthenticationRequired) as caught:
            users.login(instance, name, password, "10.1.2.3")
        messages.add(caught.value.message)
    users.disable_user(instance, "alice", "test")
    with pytest.raises(AuthenticationRequired) as caught:
        users.login(instance, "alice", PASSWORD, None)
    messages.add(caught.value.message)
    assert len(messages) == 1
    with instance.session() as session:
        failed = audit.list_events(session, event_id=int(audit.Event.USER_LOGIN_FAILED))
    assert len(failed) == 4
    assert all(e.outcome == "failure" for e in failed)
    assert "wrong-password" not in json.dumps([e.to_dict() for e in failed])


def test_sessions_end_when_idle_when_old_and_at_logout(instance: Instance, clock: ManualClock) -> None:
    users.create_user(instance, "alice", Role.ADMIN, PASSWORD, "test")
    idle = users.login(instance, "alice", PASSWORD, None)
    clock.advance(users.IDLE + timedelta(seconds=1))
    with pytest.raises(AuthenticationRequired):
        users.open_session(instance, idle.token)

    kept = users.login(instance, "alice", PASSWORD, None)
    for _ in range(int(users.ABSOLUTE / timedelta(minutes=20)) + 2):
        clock.advance(timedelta(minutes=20))
        try:
            users.open_session(instance, kept.token)
        except AuthenticationRequired:
            break
    else:
        pytest.fail("a session in use never ended")
    assert clock.now() - kept.session.created_at <= users.ABSOLUTE + timedelta(minutes=20)

    out = users.login(instance, "alice", PASSWORD, None)
    users.end_session(instance, out.session.token_hash, "user:alice")
    with pytest.raises(AuthenticationRequired):
        users.open_session(instance, out.token)


def test_disable_and_new_password_end_every_session(instance: Instance) -> None:
    users.create_user(instance, "alice", Role.ADMIN, PASSWORD, "test")
    first = users.login(instance, "alice", PASSWORD, None)
    users.set_password(instance, "alice", "Copper-Meadow-Signal-93", "test")
    with pytest.raises(AuthenticationRequired):
        users.open_session(instance, first.token)
    second = users.login(instance, "alice", "Copper-Meadow-Signal-93", None)
    users.disable_user(instance, "alice", "test")
    with pytest.raises(AuthenticationRequired):
        users.open_session(instance, second.token)


def test_roles_and_bad_input(instance: Instance) -> None:
    users.create_user(instance, "rita", Role.READER, PASSWORD, "test")
    logged = users.login(instance, "rita", PASSWORD, None)
    with pytest.raises(PermissionDenied):
        users.open_session(instance, logged.token, Role.ADMIN)
    with pytest.raises(AlreadyExists):
        users.create_user(instance, "rita", Role.ADMIN, PASSWORD, "test")
    with pytest.raises(WeakPassword):
        users.create_user(instance, "weak", Role.ADMIN, "password1234", "test")
    with pytest.raises(BadInput):
        users.create_user(instance, "no\x00nul", Role.ADMIN, PASSWORD, "test")
    with pytest.raises(NotFound):
        users.disable_user(instance, "ghost", "test")
    assert [u.name for u in users.list_users(instance)] == ["rita"]


def test_user_commands(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert run_ams("init", "--generate-recovery-password", home=home).returncode == 0
    made = run_ams(
        "user", "create", "alice", "--role", "admin", "--password-stdin", home=home, input=PASSWORD + "\n"
    )
    assert made.returncode == 0, made.stderr
    assert PASSWORD not in made.stdout + made.stderr
    generated = run_ams("user", "create", "bob", "--generate", "--json", home=home)
    assert generated.returncode == 0 and len(json.loads(generated.stdout)["password"]) >= 20
    listed = json.loads(run_ams("user", "list", "--json", home=home).stdout)
    assert [(u["name"], u["role"]) for u in listed] == [("alice", "admin"), ("bob", "reader")]
    assert "hash" not in json.dumps(listed)
    again = run_ams("user", "create", "alice", "--password-stdin", home=home, input=PASSWORD + "\n")
    assert again.returncode == 14 and again.stderr.startswith("error: ") and "Traceback" not in again.stderr
    weak = run_ams("user", "passwd", "bob", "--password-stdin", home=home, input="abc\n")
    assert weak.returncode == 32 and "console password refused" in weak.stderr
    assert run_ams("user", "disable", "bob", home=home).returncode == 0
    missing = run_ams("user", "disable", "carol", home=home)
    assert missing.returncode == 13 and "ams user list" in missing.stderr


@pytest.mark.postgres
def test_users_and_sessions_on_postgresql_and_in_a_backup(pg_instance: Instance, tmp_path: Path) -> None:
    from ams import backup
    from ams.home import Home
    from ams.instance import open_instance

    users.create_user(pg_instance, "alice", Role.ADMIN, PASSWORD, "test")
    logged = users.login(pg_instance, "alice", PASSWORD, "::1")
    assert users.open_session(pg_instance, logged.token, Role.ADMIN).user.name == "alice"
    # The PostgreSQL backup is a logical copy of every table: restored onto the embedded
    # database of a new home, the console's user is there (and logs in there).
    made = backup.create_backup(pg_instance, actor="test", dest=tmp_path / "backups")
    target = Home(tmp_path / "new-home")
    backup.restore_backup(made.path, target, actor="test", password=lambda _hint: RECOVERY_PASSWORD)
    restored = open_instance(target)
    try:
        assert [u.name for u in users.list_users(restored)] == ["alice"]
    finally:
        restored.close()
    users.end_session(pg_instance, logged.session.token_hash, "user:alice")
    with pytest.raises(AuthenticationRequired):
        users.open_session(pg_instance, logged.token)
