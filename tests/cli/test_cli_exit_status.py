"""Scripts trust exit statuses: a command that could not do what was asked never exits 0,
and its one error line says what is wrong (issue 17, items 5, 6 and the verify messages of 12)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ams import backup
from ams.errors import BackupUnrecoverable, CertificateKeyAbsent, NotFound, WrongPassword
from ams.instance import Instance
from ams.vault import certificates
from conftest import RECOVERY_PASSWORD, run_ams


def _lose_the_key(instance: Instance) -> str:
    [info] = certificates.list_certificates(instance)
    certificates.lost(instance, info.thumbprint, "test")
    return info.thumbprint


def _error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert lines and lines[-1].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[-1]


def test_password_get_of_an_undecryptable_password_fails(populated: Instance) -> None:
    home = populated.home.root
    assert run_ams("password", "get", "pc-0", home=home).returncode == 0
    thumbprint = _lose_the_key(populated)

    got = run_ams("password", "get", "pc-0", home=home)
    assert got.returncode == CertificateKeyAbsent.exit_status
    assert got.stdout == ""
    line = _error_line(got.stderr)
    assert "cannot be decrypted" in line and thumbprint[:16] in line and "ams certs import" in line

    as_json = run_ams("password", "get", "pc-0", "--json", home=home)
    assert as_json.returncode == CertificateKeyAbsent.exit_status
    document = json.loads(as_json.stdout)
    assert (document["recoverable"], document["password"]) == (False, None)

    # A listing shows what cannot be read, as such: not an error.
    listing = run_ams("password", "get", "pc-0", "--history", home=home)
    assert listing.returncode == 0 and "unrecoverable" in listing.stdout


def test_deep_verify_fails_when_passwords_are_unrecoverable(populated: Instance) -> None:
    good = backup.create_backup(populated, actor="test")
    ok = run_ams("backup", "verify", str(good.path), "--deep", home=populated.home.root)
    assert ok.returncode == 0, ok.stderr

    _lose_the_key(populated)
    made = backup.create_backup(populated, actor="test")
    drill = run_ams("backup", "verify", str(made.path), "--deep", home=populated.home.root)
    assert drill.returncode == BackupUnrecoverable.exit_status == 88
    assert "NO private key, 9 passwords unrecoverable" in drill.stdout
    assert "restore drill FAILED" in drill.stdout
    assert "--allow-unrecoverable" in _error_line(drill.stderr)

    as_json = run_ams("backup", "verify", str(made.path), "--deep", "--json", home=populated.home.root)
    assert as_json.returncode == 88
    report = json.loads(as_json.stdout)
    assert report["ok"] is False and report["deep"]["unrecoverable_passwords"] == 9

    accepted = run_ams(
        "backup", "verify", str(made.path), "--deep", "--allow-unrecoverable", home=populated.home.root
    )
    assert accepted.returncode == 0, accepted.stderr
    assert "accepted with --allow-unrecoverable" in accepted.stdout
    alone = run_ams("backup", "verify", str(made.path), "--allow-unrecoverable", home=populated.home.root)
    assert alone.returncode == 12 and "goes with --deep" in _error_line(alone.stderr)

    # The archive itself is whole: the catalog keeps it as verified, the event says the drill failed.
    [entry] = [e for e in backup.list_backups(populated) if e.backup_id == made.backup_id]
    assert entry.verified_ok is True
    with pytest.raises(BackupUnrecoverable) as raised:
        backup.verify_backup(made.path, instance=populated, deep=True)
    assert raised.value.report["deep"]["unrecoverable_passwords"] == 9


def test_verify_with_a_wrong_password_or_a_missing_file(populated: Instance, tmp_path: Path) -> None:
    made = backup.create_backup(populated, actor="test")
    wrong = run_ams("backup", "verify", str(made.path), "--password-stdin", input="Not-The-Password-1234\n")
    assert wrong.returncode == WrongPassword.exit_status
    line = _error_line(wrong.stderr)
    assert "does not open this backup" in line and "written" not in line.lower()
    right = run_ams("backup", "verify", str(made.path), "--password-stdin", input=RECOVERY_PASSWORD + "\n")
    assert right.returncode == 0, right.stderr

    missing = run_ams("backup", "verify", str(tmp_path / "missing.amsbak"))
    assert missing.returncode == NotFound.exit_status
    assert "does not exist" in _error_line(missing.stderr)
    missing_here = run_ams("backup", "verify", str(tmp_path / "missing.amsbak"), home=populated.home.root)
    assert missing_here.returncode == NotFound.exit_status
