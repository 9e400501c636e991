"""Offsite copies against a real S3 server process (moto's standalone server) on loopback."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ams import audit
from ams.backup import offsite, offsite_jobs, targets
from ams.backup.schedule import run_scheduled
from ams.clock import ManualClock
from ams.home import Home
from ams.instance import Instance, open_instance
from conftest import RECOVERY_PASSWORD, run_ams, tree_digest
from offsite_support import MotoServer


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


_buckets = iter(range(1000))


def new_bucket(moto: MotoServer, *, lock: bool = True) -> str:
    name = f"ams-offsite-{next(_buckets)}"
    moto.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=lock)
    return name


def real_time(instance: Instance) -> None:
    """Object Lock dates are the server's: bring the test's clock to the real time."""
    clock = instance.clock
    assert isinstance(clock, ManualClock)
    clock.advance(datetime.now(UTC) - clock.now())


def add_cli(
    home: Path, moto: MotoServer, name: str, url: str, *extra: str, secret: str | None = None
) -> object:
    assert moto.full is not None
    return run_ams(
        "backup",
        "target",
        "add",
        name,
        "--s3",
        url,
        "--endpoint-url",
        moto.endpoint,
        "--access-key-id",
        moto.full.access_key_id,
        *extra,
        home=home,
        input=(secret or moto.full.secret) + "\n",
    )


def audit_text(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return json.dumps(conn.execute("SELECT * FROM audit_events").fetchall(), default=str)
    finally:
        conn.close()


def test_a_scheduled_backup_is_locked_offsite_and_a_new_home_restores_from_the_bucket(
    golden: tuple[Home, object, object], populated: Instance, moto: MotoServer, tmp_path: Path
) -> None:
    real_time(populated)
    fleet = golden[1].bind(populated)  # type: ignore[attr-defined]
    expected = fleet.read_all(populated)
    bucket = new_bucket(moto)
    home = populated.home.root
    added = add_cli(
        home, moto, "offsite", f"s3://{bucket}/ams/", "--lock-days", "2", "--lock-mode", "governance"
    )
    assert added.returncode == 0, added.stderr  # type: ignore[attr-defined]

    result = run_scheduled(populated)
    assert result["ok"] and result["offsite"][0]["ok"], result
    key = result["offsite"][0]["key"]
    assert key == "ams/" + Path(result["backup"]["path"]).name
    s3 = moto.client()
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ObjectLockMode"] == "GOVERNANCE"
    assert timedelta(days=1) < head["ObjectLockRetainUntilDate"] - datetime.now(UTC) <= timedelta(days=2)
    assert head["Metadata"]["ams-backup-id"] == result["backup"]["backup_id"]
    # Deleting the locked version before its date is refused by the server itself.
    with pytest.raises(s3.exceptions.ClientError) as refused:
        s3.delete_object(Bucket=bucket, Key=key, VersionId=head["VersionId"])
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    # What the bucket holds, read from the bucket.
    listed = run_ams("backup", "list", "--target", "offsite", "--json", home=home)
    assert listed.returncode == 0, listed.stderr
    [obj] = json.loads(listed.stdout)
    assert obj["backup_id"] == result["backup"]["backup_id"] and obj["locked"] is True
    assert offsite.offsite_status(populated)[0]["last_copy"]["state"] == "copied"

    # The machine is gone: its home entirely. A new home from the bucket, recovery password only.
    populated.close()
    shutil.rmtree(home)
    env = moto.env()
    url = f"s3://{bucket}/{key}"
    new_home = tmp_path / "new-machine"
    restored = run_ams(
        "backup",
        "restore",
        url,
        "--endpoint-url",
        moto.endpoint,
        "--password-stdin",
        "--json",
        home=new_home,
        input=RECOVERY_PASSWORD + "\n",
        env=env,
    )
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["backup_id"] == result["backup"]["backup_id"]
    new = open_instance(Home(new_home), ManualClock(datetime.now(UTC)))
    try:
        assert fleet.read_all(new) == expected  # every password that existed at backup time
        with new.session() as session:
            [event] = audit.list_events(session, event_id=int(audit.Event.BACKUP_RESTORED))
        assert event.details["file"] == url
    finally:
        new.close()

    # `aws s3 cp` copies the object elsewhere: the copy restores too.
    other = new_bucket(moto, lock=False)
    copied = subprocess.run(
        ["aws", "s3", "cp", url, f"s3://{other}/elsewhere.amsbak", "--endpoint-url", moto.endpoint],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert copied.returncode == 0, copied.stderr
    again = run_ams(
        "backup",
        "restore",
        f"s3://{other}/elsewhere.amsbak",
        "--endpoint-url",
        moto.endpoint,
        "--password-stdin",
        home=tmp_path / "third",
        input=RECOVERY_PASSWORD + "\n",
        env=env,
    )
    assert again.returncode == 0, again.stderr


def test_bad_targets_are_refused_with_one_line_and_nothing_stored(
    instance: Instance, moto: MotoServer, tmp_path: Path
) -> None:
    from ams import errors

    home = instance.home.root
    locked = new_bucket(moto)
    plain = new_bucket(moto, lock=False)
    before = tree_digest(home / "config")
    # Through the command: the exit status and one line, no traceback.
    answer = add_cli(home, moto, "t", f"s3://{locked}/", secret="not-the-secret")
    assert answer.returncode == 48, answer.stderr  # type: ignore[attr-defined]
    [line] = answer.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert line.startswith("error: target t: ") and "refused the credentials" in line
    # The same service behind every interface, for the other faults.
    assert moto.full is not None
    key = {"access_key_id": moto.full.access_key_id, "secret": moto.full.secret}
    cases: list[tuple[dict[str, object], type[errors.AMSError], str]] = [
        ({"url": "s3://no-such-bucket-here/", **key}, errors.OffsiteBucketMissing, "does not exist"),
        (
            {"url": f"s3://{plain}/", "lock_days": 3, "lock_mode": "compliance", **key},
            errors.OffsiteLockUnavailable,
            "no Object Lock",
        ),
        (
            {"url": f"s3://{plain}/", "endpoint_url": "http://127.0.0.1:9", **key},
            errors.OffsiteUnreachable,
            "reached",
        ),
        ({"url": f"s3://{plain}/", "lock_days": 3, **key}, errors.BadInput, "go together"),
        ({"url": f"s3://{plain}/", "access_key_id": "AKIA0000"}, errors.BadInput, "secret"),
        ({"url": "https://not-s3/"}, errors.BadInput, "s3://BUCKET/PREFIX"),
    ]
    for options, error, text in cases:
        options = {"endpoint_url": moto.endpoint, **options}
        with pytest.raises(error) as raised:
            targets.add_target(instance, name="t", actor="test", **options)  # type: ignore[arg-type]
        assert text in raised.value.message and "\n" not in raised.value.message
    assert (errors.OffsiteBucketMissing.exit_status, errors.OffsiteLockUnavailable.exit_status) == (49, 77)
    assert errors.OffsiteUnreachable.exit_status == 62
    assert targets.list_targets(instance) == []
    assert tree_digest(home / "config") == before
    # A key without s3:DeleteObject: `target test` names the missing permission.
    assert moto.no_delete is not None
    targets.add_target(
        instance,
        name="nodelete",
        url=f"s3://{plain}/x/",
        actor="test",
        endpoint_url=moto.endpoint,
        access_key_id=moto.no_delete.access_key_id,
        secret=moto.no_delete.secret,
    )
    tested = run_ams("backup", "target", "test", "nodelete", home=home)
    assert tested.returncode == 48, tested.stderr
    assert "s3:DeleteObject" in tested.stderr and "Traceback" not in tested.stderr


def test_the_server_stopped_during_an_upload_keeps_the_local_backup_and_the_next_run_copies_it(
    instance: Instance, moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server of its own, stopped in the middle of a multipart upload.
    server = MotoServer(tmp_path)
    server.start()
    try:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        bucket = new_bucket(server, lock=False)
        targets.add_target(
            instance, name="flaky", url=f"s3://{bucket}/", actor="test", endpoint_url=server.endpoint
        )
        (instance.home.config_dir / "templates" / "big.bin").write_bytes(os.urandom(11 << 20))
        monkeypatch.setattr(offsite, "PART_SIZE", 5 << 20)
        real_read = offsite._read_part

        def stop_after_the_first_part(fd: int, offset: int, length: int) -> bytes:
            if offset > 0:
                server.stop()
            return real_read(fd, offset, length)

        monkeypatch.setattr(offsite, "_read_part", stop_after_the_first_part)
        from ams import backup

        result = backup.create_backup(instance, actor="test")
        assert result.offsite is not None and not result.offsite[0]["ok"]
        assert "flaky" in result.offsite[0]["error"]
        assert result.path.is_file()
        [row] = [b for b in backup.list_backups(instance) if b.backup_id == result.backup_id]
        assert row.status == "complete" and row.verified_ok is True
        status = offsite.offsite_status(instance)[0]
        assert status["last_copy"]["state"] == "failed" and status["missing"] == 1
        with instance.session() as session:
            [failed] = audit.list_events(session, event_id=int(audit.Event.OFFSITE_COPY_FAILED))
        assert failed.target == result.backup_id and failed.outcome == "failure"
        from ams.overview import console_overview

        warnings = [w.text for w in console_overview(instance)["warnings"] if w.level == "danger"]
        assert any("offsite target flaky failed" in w for w in warnings), warnings

        # The server is back (empty, as a new one); the next run copies what is missing.
        monkeypatch.setattr(offsite, "_read_part", real_read)
        server.start()
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        server.client().create_bucket(Bucket=bucket)
        # What an interrupted upload left behind is aborted by the next run.
        server.client().create_multipart_upload(Bucket=bucket, Key=result.path.name)
        done = offsite.copy_pending(instance, actor="test")
        assert [o.ok for o in done] == [True]
        with instance.session() as session:
            assert audit.list_events(session, event_id=int(audit.Event.OFFSITE_UPLOADS_ABORTED))
        head = server.client().head_object(Bucket=bucket, Key=result.path.name)
        assert head["ContentLength"] == result.size_bytes
        assert offsite.offsite_status(instance)[0]["missing"] == 0
    finally:
        server.stop()


def test_a_flipped_byte_in_the_stored_object_is_refused_by_verify_and_restore(
    instance: Instance, moto: MotoServer, tmp_path: Path
) -> None:
    from ams import backup

    bucket = new_bucket(moto, lock=False)
    assert moto.full is not None
    targets.add_target(
        instance,
        name="t",
        url=f"s3://{bucket}/",
        actor="test",
        endpoint_url=moto.endpoint,
        access_key_id=moto.full.access_key_id,
        secret=moto.full.secret,
    )
    result = backup.create_backup(instance, actor="test")
    assert result.offsite and result.offsite[0]["ok"]
    s3 = moto.client()
    key = result.path.name
    original = s3.get_object(Bucket=bucket, Key=key)
    meta = original["Metadata"]
    data = bytearray(original["Body"].read())
    data[len(data) // 2] ^= 0x01
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(data), Metadata=meta)  # someone replaced it
    url = f"s3://{bucket}/{key}"
    home = instance.home.root
    verified = run_ams("backup", "verify", url, home=home)
    assert verified.returncode == 63 and "SHA-256" in verified.stderr, verified.stderr
    # The same flip with the metadata recomputed: the archive's own checks refuse it.
    import hashlib

    s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=bytes(data),
        Metadata={**meta, "ams-sha256": hashlib.sha256(data).hexdigest()},
    )
    verified = run_ams("backup", "verify", url, home=home)
    assert verified.returncode == 80, verified.stderr
    # The local archive and its catalog row are untouched by the copy's failures.
    [row] = [b for b in backup.list_backups(instance) if b.backup_id == result.backup_id]
    assert row.verified_ok is True and row.exists
    with instance.session() as session:
        events = audit.list_events(session, event_id=int(audit.Event.BACKUP_VERIFIED))
    assert [e.details["file"] for e in events if e.outcome == "failure"] == [url, url]
    from ams.backup import remote
    from ams.errors import OffsiteObjectNotFound

    with pytest.raises(OffsiteObjectNotFound):
        remote.verify_url(f"s3://{bucket}/nothing-here.amsbak", instance=instance)
    instance.close()
    before = tree_digest(home)
    restored = run_ams("backup", "restore", url, "--yes", home=home)
    assert restored.returncode == 80, restored.stderr
    assert tree_digest(home) == before  # nothing changed, no scratch left beside the home
    assert not [p for p in home.parent.iterdir() if p.name.startswith(".ams-fetch-")]


def test_the_secret_never_appears_in_logs_events_metrics_or_responses(
    instance: Instance, moto: MotoServer, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from ams import apikeys
    from ams.api.app import create_app

    assert moto.full is not None
    secret = moto.full.secret
    bucket = new_bucket(moto, lock=False)
    home = instance.home.root
    outputs = []
    added = add_cli(home, moto, "s", f"s3://{bucket}/p/", "--json")
    outputs += [added.stdout, added.stderr]  # type: ignore[attr-defined]
    made_backup = run_ams("backup", "create", "--json", home=home)
    assert made_backup.returncode == 0, made_backup.stderr
    assert json.loads(made_backup.stdout)["offsite"][0]["ok"] is True
    outputs += [made_backup.stdout, made_backup.stderr]
    wrong = add_cli(home, moto, "w", f"s3://{bucket}/", secret=secret[::-1])
    assert wrong.returncode == 48  # type: ignore[attr-defined]
    assert secret[::-1] not in wrong.stderr + wrong.stdout  # type: ignore[attr-defined]
    admin = apikeys.create(instance, "ops", apikeys.Role.ADMIN, "test").token
    from ams import users

    users.create_user(instance, "alice", apikeys.Role.ADMIN, "Violet-Harbour-Engine-58", "test")
    session_token = users.login(instance, "alice", "Violet-Harbour-Engine-58", None).token
    with TestClient(create_app(instance)) as client:
        headers = {"Authorization": f"Bearer {admin}"}
        client.cookies.set("ams_session", session_token)
        page = client.get("/database")  # the console's Database page: the targets and the last copy
        assert page.status_code == 200 and "Offsite copies" in page.text
        assert f"s3://{bucket}/p/" in page.text and "ok, " in page.text
        outputs.append(page.text)
        client.cookies.clear()
        for path in ("/api/v1/backups/targets", "/metrics", "/api/v1/status"):
            answer = client.get(path, headers=headers)
            assert answer.status_code == 200, answer.text
            outputs.append(answer.text)
        made = client.post(
            "/api/v1/backups/targets",
            headers=headers,
            json={
                "name": "api",
                "url": f"s3://{bucket}/api/",
                "endpoint_url": moto.endpoint,
                "access_key_id": moto.full.access_key_id,
                "secret_access_key": secret,
            },
        )
        assert made.status_code == 201, made.text
        outputs.append(made.text)
        reader = apikeys.create(instance, "ro", apikeys.Role.READER, "test").token
        as_reader = {"Authorization": f"Bearer {reader}"}
        assert client.get("/api/v1/backups/targets", headers=as_reader).status_code == 200
        refused = client.delete("/api/v1/backups/targets/api", headers=as_reader)
        assert refused.status_code == 403, refused.text
        missing = client.post("/api/v1/backups/targets/nope/test", headers=headers)
        assert missing.status_code == 404 and missing.json()["error"] == "offsite_target_not_found"
        assert "/api/v1/backups/targets/{name}/drill" in client.get("/openapi.json").json()["paths"]
        assert client.delete("/api/v1/backups/targets/api", headers=headers).status_code == 200
        assert "ams_offsite_last_success_age_seconds" in outputs[-3]
    outputs.append(audit_text(instance.home.sqlite_path))
    outputs.append((home / "config" / "ams.toml").read_text())
    assert all(secret not in text for text in outputs)
    # The sealed column is not the secret either.
    conn = sqlite3.connect(instance.home.sqlite_path)
    try:
        sealed = [r[0] for r in conn.execute("SELECT secret_sealed FROM offsite_targets")]
    finally:
        conn.close()
    assert sealed and all(secret.encode() not in s for s in sealed)


def test_target_retention_deletes_only_what_its_rule_allows_and_never_a_locked_copy(
    instance: Instance, moto: MotoServer
) -> None:
    from ams import backup

    real_time(instance)
    bucket = new_bucket(moto)
    assert moto.full is not None
    targets.add_target(
        instance,
        name="r",
        url=f"s3://{bucket}/",
        actor="test",
        endpoint_url=moto.endpoint,
        access_key_id=moto.full.access_key_id,
        secret=moto.full.secret,
        keep_last=1,
    )
    first = backup.create_backup(instance, actor="test")
    s3 = moto.client()  # the first copy is locked for a day
    until = datetime.now(UTC) + timedelta(days=1)
    s3.put_object_retention(
        Bucket=bucket, Key=first.path.name, Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until}
    )
    assert isinstance(instance.clock, ManualClock)
    instance.clock.advance(timedelta(minutes=1))
    second = backup.create_backup(instance, actor="test")
    instance.clock.advance(timedelta(minutes=1))
    third = backup.create_backup(instance, actor="test")
    assert second.offsite and third.offsite and third.offsite[0]["ok"]
    keys = {o["key"] for o in offsite.list_objects(instance, "r")}
    # keep-last 1: the newest stays, the second went, the first is kept by its lock.
    assert keys == {first.path.name, third.path.name}
    report = offsite.prune_target(instance, "r", actor="test")
    assert report["kept_by_lock"] == [first.path.name] and report["deleted"] == []
    # A drill restores the newest copy into a scratch home and deep-verifies it.
    from ams.backup import remote

    drilled = remote.drill(instance, "r", actor="test")
    assert drilled["ok"] and drilled["backup_id"] == third.backup_id
    assert drilled["deep"]["certificates_checked"] and drilled["restore_seconds"] >= 0
    # Weekly by the scheduler: due once the target's drill_days have passed.
    targets.add_target(
        instance,
        name="r",
        url=f"s3://{bucket}/",
        actor="test",
        endpoint_url=moto.endpoint,
        access_key_id=moto.full.access_key_id,
        secret=moto.full.secret,
        keep_last=1,
        drill_days=7,
        replace=True,
    )
    assert offsite_jobs.run_due(instance)["drills"] == []  # drilled just now
    instance.clock.advance(timedelta(days=8))
    [weekly] = offsite_jobs.run_due(instance)["drills"]
    assert weekly["ok"] and weekly["age_hours"] > 24 * 7
    with instance.session() as session:
        assert len(audit.list_events(session, event_id=int(audit.Event.OFFSITE_DRILL))) == 2
    assert offsite.offsite_status(instance)[0]["last_drill"]["ok"] is True
