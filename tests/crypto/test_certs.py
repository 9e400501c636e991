"""The certificates service (ams.vault.certificates), `ams certs` and /api/v1/certificates.

In-process for detail; a few runs of the real `ams` command for the path a user takes.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ams import apikeys, audit, crypto
from ams.api import create_app
from ams.apikeys import Role
from ams.clock import ManualClock
from ams.db.models.certificates import CertificateRow
from ams.errors import (
    AlreadyExists,
    BadInput,
    CertificateKeyAbsent,
    CertificateKeyUnsupported,
    Conflict,
    MasterKeyLocked,
    NotFound,
    PfxInvalid,
    PfxKeyMismatch,
    PfxNoPrivateKey,
    WeakPassword,
    WrongPassword,
)
from ams.home import Home
from ams.instance import Instance, open_instance
from ams.vault import certificates, devices, passwords, regkeys
from conftest import RECOVERY_PASSWORD, run_ams

PFX_PASSWORD = "Copper-Meadow-Violin-5382"
DIRECTORY = "d-0123456789"


@pytest.fixture(autouse=True)
def _fast_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    # These tests do not look at the key size (tests/crypto/test_certs_pfx.py does): 2048 bits is fast.
    monkeypatch.setattr(certificates, "KEY_SIZE", 2048)


@pytest.fixture(scope="module")
def bad_pfx_files() -> dict[str, tuple[bytes, type[Exception]]]:
    """PFX files that must each be refused with their own clear error."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import pkcs12

    cert_der, key_der = crypto.generate_certificate("bad inputs", key_size=2048)
    cert = x509.load_der_x509_certificate(cert_der)
    enc = serialization.BestAvailableEncryption(PFX_PASSWORD.encode())
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - refused
    good = crypto.export_pfx(cert_der, key_der, PFX_PASSWORD)
    return {
        "wrong password": (good, WrongPassword),  # imported with another password below
        "no private key": (
            pkcs12.serialize_key_and_certificates(b"x", None, cert, None, enc),
            PfxNoPrivateKey,
        ),
        "key of another certificate": (
            pkcs12.serialize_key_and_certificates(b"x", other, None, [cert], enc),
            PfxKeyMismatch,
        ),
        "ec key": (
            pkcs12.serialize_key_and_certificates(b"x", ec_key, None, None, enc),
            CertificateKeyUnsupported,
        ),
        "rsa 1024": (
            pkcs12.serialize_key_and_certificates(b"x", small, None, None, enc),
            CertificateKeyUnsupported,
        ),
        "not a pfx": (b"just some text\n" * 20, PfxInvalid),
        "pem": (cert.public_bytes(serialization.Encoding.PEM), PfxInvalid),
        "empty": (b"", PfxInvalid),
    }


def rows(instance: Instance) -> list[tuple[Any, ...]]:
    """Every certificate row, every column: to prove that nothing changed."""
    with instance.session() as session:
        return [
            tuple(getattr(r, c.key) for c in CertificateRow.__table__.columns)
            for r in session.scalars(select(CertificateRow).order_by(CertificateRow.thumbprint))
        ]


def events(instance: Instance, event: audit.Event) -> list[audit.EventRecord]:
    with instance.session() as session:
        return audit.list_events(session, event_id=event)


# -- creating, activating, listing ---------------------------------------------------------------


def test_ensure_active_generates_once(instance: Instance) -> None:
    first = certificates.ensure_active(instance, "agent", "test")
    assert first.state == "active" and first.has_private_key and first.scope == "agent"
    assert certificates.ensure_active(instance, "agent", "test").thumbprint == first.thumbprint
    assert [c.thumbprint for c in certificates.list_certificates(instance)] == [first.thumbprint]
    assert certificates.active_certificate(instance, "agent") == first
    assert certificates.active_certificate(instance, DIRECTORY) is None
    assert first.thumbprint == crypto.thumbprint(first.certificate_der)
    assert crypto.certificate_from_pem(first.pem) == first.certificate_der
    key = certificates.private_key_der(instance, first.thumbprint)
    assert key is not None
    blob = crypto.encrypt_password(first.certificate_der, b"{}")
    assert crypto.decrypt_password(blob, key) == b"{}"
    created = events(instance, audit.Event.CERTIFICATE_CREATED)
    assert [(e.target, e.details["scope"]) for e in created] == [(first.thumbprint, "agent")]


def test_private_key_is_sealed_and_bound_to_its_row(instance: Instance) -> None:
    info = certificates.ensure_active(instance, "agent", "test")
    with instance.session() as session:
        sealed = session.get(CertificateRow, info.thumbprint).private_key_sealed  # type: ignore[union-attr]
    key = certificates.private_key_der(instance, info.thumbprint)
    assert sealed is not None and key is not None and key not in sealed
    box = instance.keyring.box
    assert box.open("certificate-private-key", f"certificate:{info.thumbprint}", sealed) == key
    with pytest.raises(Exception, match="could not be decrypted"):
        box.open("certificate-private-key", "certificate:" + "0" * 64, sealed)


def test_new_then_activate_keeps_exactly_one_active(instance: Instance, clock: ManualClock) -> None:
    first = certificates.create(instance, DIRECTORY, "test")
    assert first.state == "active"  # the scope had none
    second = certificates.create(instance, DIRECTORY, "test")
    assert second.state == "standby"
    clock.advance(timedelta(minutes=1))
    activated = certificates.activate(instance, second.thumbprint[:12], "test")
    assert activated.thumbprint == second.thumbprint and activated.state == "active"
    states = {c.thumbprint: c.state for c in certificates.list_certificates(instance, DIRECTORY)}
    assert states == {first.thumbprint: "standby", second.thumbprint: "active"}
    third = certificates.create(instance, DIRECTORY, "test", activate=True)
    states = {c.thumbprint: c.state for c in certificates.list_certificates(instance, DIRECTORY)}
    assert list(states.values()).count("active") == 1 and states[third.thumbprint] == "active"
    previous = [e.details["previous"] for e in events(instance, audit.Event.CERTIFICATE_ACTIVATED)]
    assert previous[-2:] == [first.thumbprint, second.thumbprint]
    # Scopes are independent.
    assert certificates.ensure_active(instance, "agent", "test").scope == "agent"


def test_racing_first_use_hands_out_one_active_certificate(instance: Instance) -> None:
    import threading

    barrier = threading.Barrier(3)
    got: list[str] = []

    def first_check_in() -> None:
        barrier.wait()
        got.append(certificates.ensure_active(instance, "agent", "test").thumbprint)

    threads = [threading.Thread(target=first_check_in) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    active = certificates.active_certificate(instance, "agent")
    assert active is not None
    assert got == [active.thumbprint] * 3
    # The losers' certificates were discarded, not kept: one certificate, one event.
    assert [c.thumbprint for c in certificates.list_certificates(instance)] == [active.thumbprint]
    assert len(events(instance, audit.Event.CERTIFICATE_CREATED)) == 1


def test_the_database_refuses_a_second_active_certificate(instance: Instance) -> None:
    info = certificates.ensure_active(instance, "agent", "test")
    with pytest.raises(IntegrityError), instance.transaction() as session:
        row = session.get(CertificateRow, info.thumbprint)
        assert row is not None
        session.add(
            CertificateRow(
                thumbprint="f" * 64,
                scope="agent",
                subject=row.subject,
                not_before=row.not_before,
                not_after=row.not_after,
                certificate_der=row.certificate_der,
                private_key_sealed=None,
                state="active",
                source="imported",
                created_at=row.created_at,
            )
        )
    assert len(certificates.list_certificates(instance)) == 1


@pytest.mark.parametrize(
    "scope", ["", "Agent", "d-123", "d-0123456789a", "d-ABCDEF0123", "x-0123456789", "agent "]
)
def test_bad_scopes_are_refused(instance: Instance, scope: str) -> None:
    with pytest.raises(BadInput, match="scope"):
        certificates.create(instance, scope, "test")
    assert rows(instance) == []


def test_unknown_and_ambiguous_thumbprints(instance: Instance) -> None:
    with pytest.raises(NotFound):
        certificates.get(instance, "ab" * 32)
    with pytest.raises(NotFound):
        certificates.activate(instance, "abcdef12", "test")
    with pytest.raises(BadInput):
        certificates.get(instance, "not-hex!")
    with pytest.raises(BadInput):
        certificates.get(instance, "a" * 65)


def test_expired_certificates_stay_listed_and_are_not_activated(
    instance: Instance, clock: ManualClock
) -> None:
    old = certificates.create(instance, "agent", "test")
    newer = certificates.create(instance, "agent", "test")
    clock.set(old.not_after + timedelta(days=1))
    listed = certificates.list_certificates(instance, "agent")
    assert {c.thumbprint for c in listed} == {old.thumbprint, newer.thumbprint}
    assert all(c.expired(clock.now()) for c in listed)
    with pytest.raises(Conflict, match="expired"):
        certificates.activate(instance, newer.thumbprint, "test")
    assert certificates.private_key_der(instance, old.thumbprint) is not None


def test_a_locked_instance_makes_nothing(instance: Instance, home: Home, clock: ManualClock) -> None:
    home.service_key_file.unlink()
    locked = open_instance(home, clock)
    try:
        with pytest.raises(MasterKeyLocked):
            certificates.ensure_active(locked, "agent", "test")
        assert rows(locked) == []
    finally:
        locked.close()


# -- export and import ---------------------------------------------------------------------------


def test_export_to_file_is_0600_atomic_and_never_overwrites(instance: Instance, tmp_path: Path) -> None:
    info = certificates.ensure_active(instance, "agent", "test")
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "agent.pfx"
    with pytest.raises(WeakPassword):
        certificates.export_to_file(instance, info.thumbprint, out, "password123", "test")
    assert not out.exists()
    certificates.export_to_file(instance, info.thumbprint, out, PFX_PASSWORD, "test")
    assert out.stat().st_mode & 0o777 == 0o600
    assert crypto.import_pfx(out.read_bytes(), PFX_PASSWORD)[0] == info.certificate_der
    before = out.read_bytes()
    with pytest.raises(AlreadyExists):
        certificates.export_to_file(instance, info.thumbprint, out, PFX_PASSWORD, "test")
    assert out.read_bytes() == before
    certificates.export_to_file(instance, info.thumbprint, out, PFX_PASSWORD, "test", force=True)
    assert out.read_bytes() != before  # fresh salts
    assert out.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in folder.iterdir()) == ["agent.pfx"]  # no temporary left
    with pytest.raises(BadInput):
        certificates.export_to_file(instance, info.thumbprint, folder, PFX_PASSWORD, "test")
    assert [e.target for e in events(instance, audit.Event.CERTIFICATE_EXPORTED)] == [info.thumbprint] * 2


def test_import_into_another_instance(instance: Instance, tmp_path: Path, clock: ManualClock) -> None:
    info = certificates.ensure_active(instance, "agent", "test")
    data = certificates.export(instance, info.thumbprint, PFX_PASSWORD, "test")
    from ams.instance import create_instance

    other_home = Home(tmp_path / "other")
    create_instance(other_home, recovery_password=RECOVERY_PASSWORD, actor="test", clock=clock)
    other = open_instance(other_home, clock)
    try:
        result = certificates.import_pfx(other, data, PFX_PASSWORD, "agent", "test")
        assert not result.restored
        assert result.certificate.thumbprint == info.thumbprint
        assert result.certificate.state == "active"  # the scope had none
        assert result.certificate.source == "imported"
        assert certificates.private_key_der(other, info.thumbprint) == certificates.private_key_der(
            instance, info.thumbprint
        )
        with pytest.raises(AlreadyExists):
            certificates.import_pfx(other, data, PFX_PASSWORD, "agent", "test")
        with pytest.raises(Conflict, match="scope agent"):
            certificates.import_pfx(other, data, PFX_PASSWORD, DIRECTORY, "test")
    finally:
        other.close()


@pytest.mark.parametrize(
    "case",
    ["wrong password", "no private key", "key of another certificate", "ec key", "rsa 1024", "not a pfx",
     "pem", "empty"],
)  # fmt: skip
def test_bad_pfx_files_change_nothing(
    instance: Instance, bad_pfx_files: dict[str, tuple[bytes, type[Exception]]], case: str
) -> None:
    certificates.ensure_active(instance, "agent", "test")
    before = rows(instance)
    audit_before = events(instance, audit.Event.CERTIFICATE_IMPORTED)
    data, error = bad_pfx_files[case]
    password = "Some-Other-Password-77" if case == "wrong password" else PFX_PASSWORD
    with pytest.raises(error) as caught:
        certificates.import_pfx(instance, data, password, "agent", "test", activate=True)
    message = str(caught.value)
    assert "\n" not in message and PFX_PASSWORD not in message and len(message) > 20
    assert rows(instance) == before
    assert events(instance, audit.Event.CERTIFICATE_IMPORTED) == audit_before


# -- lost keys -------------------------------------------------------------------------------------


def _device_with_password(instance: Instance, name: str) -> tuple[devices.AuthenticatedDevice, str]:
    key = regkeys.create(instance, f"key for {name}", "test")
    registered = devices.register(instance, key.key, name)
    device = devices.authenticate(instance, registered.token)
    return device, _rotate(instance, device, None)


def _rotate(instance: Instance, device: devices.AuthenticatedDevice, version: int | None) -> str:
    """What an agent does: ask, encrypt a new password to the active certificate, report it."""
    advice = passwords.decide(instance, device, version)
    assert advice.rotate
    password = f"pw-{device.name}-{advice.next_version}-Zq8!"
    plaintext = json.dumps(
        {
            "account": advice.policy.account,
            "password": password,
            "created_at": instance.clock.now().isoformat(),
            "version": advice.next_version,
        }
    ).encode()
    blob = crypto.encrypt_password(crypto.certificate_from_pem(advice.certificate_pem), plaintext)
    passwords.store(
        instance, device, advice.policy.account, advice.next_version, base64.b64encode(blob).decode()
    )
    return password


def test_lost_then_reimport_round_trip(instance: Instance, clock: ManualClock) -> None:
    old = certificates.ensure_active(instance, "agent", "test")
    pfx = certificates.export(instance, old.thumbprint, PFX_PASSWORD, "test")
    one, first_password = _device_with_password(instance, "host-one")
    two, _ = _device_with_password(instance, "host-two")
    older_password = first_password
    devices.expire(instance, "test", device=one.id)
    current_password = _rotate(instance, one, 1)  # host-one: version 1 in history, 2 current
    listed = {c.thumbprint: c for c in certificates.list_certificates(instance)}
    assert (listed[old.thumbprint].current_passwords, listed[old.thumbprint].history_passwords) == (2, 1)

    result = certificates.lost(instance, old.thumbprint, "test")
    assert result.expired_passwords == 2
    assert result.certificate.state == "lost" and not result.certificate.has_private_key
    assert result.replacement is not None and result.replacement.state == "active"
    assert certificates.active_certificate(instance, "agent") == result.replacement
    assert certificates.private_key_der(instance, old.thumbprint) is None
    with instance.session() as session:
        assert session.get(CertificateRow, old.thumbprint).private_key_sealed is None  # type: ignore[union-attr]
    lost_events = events(instance, audit.Event.CERTIFICATE_LOST)
    assert [(e.target, e.details["expired"]) for e in lost_events] == [(old.thumbprint, 2)]
    with pytest.raises(Conflict, match="already"):
        certificates.lost(instance, old.thumbprint, "test")
    with pytest.raises(CertificateKeyAbsent):
        certificates.activate(instance, old.thumbprint, "test")
    with pytest.raises(CertificateKeyAbsent):
        certificates.export(instance, old.thumbprint, PFX_PASSWORD, "test")

    # Passwords under the lost key: unrecoverable, never an error; each device rotates next.
    history = passwords.read(instance, one.id, "test", history=True)
    assert history["current"]["recoverable"] is False and history["current"]["password"] is None
    assert [h["recoverable"] for h in history["history"]] == [False]
    advice = passwords.decide(instance, two, 1)
    assert (advice.rotate, advice.reason) == (True, "expired")
    assert advice.certificate_thumbprint == result.replacement.thumbprint
    new_password = _rotate(instance, two, 1)
    assert passwords.read(instance, two.id, "test")["password"] == new_password

    # The PFX turns up again: its passwords read again; the new certificate stays active.
    restored = certificates.import_pfx(instance, pfx, PFX_PASSWORD, "agent", "test")
    assert (
        restored.restored and restored.certificate.state == "standby" and restored.certificate.has_private_key
    )
    active = certificates.active_certificate(instance, "agent")
    assert active is not None and active.thumbprint == result.replacement.thumbprint
    history = passwords.read(instance, one.id, "test", history=True)
    assert history["current"]["password"] == current_password
    assert [h["password"] for h in history["history"]] == [older_password]
    listed = {c.thumbprint: c for c in certificates.list_certificates(instance)}
    assert (listed[old.thumbprint].current_passwords, listed[old.thumbprint].history_passwords) == (1, 2)
    assert (listed[result.replacement.thumbprint].current_passwords) == 1
    imported = events(instance, audit.Event.CERTIFICATE_IMPORTED)
    assert imported[-1].details == {"scope": "agent", "restored": True, "activated": False}


def test_losing_a_standby_certificate_keeps_the_active_one(instance: Instance) -> None:
    active = certificates.ensure_active(instance, "agent", "test")
    standby = certificates.create(instance, "agent", "test")
    result = certificates.lost(instance, standby.thumbprint, "test")
    assert result.replacement is None and result.expired_passwords == 0
    assert certificates.active_certificate(instance, "agent") == active
    assert len(certificates.list_certificates(instance)) == 2


def test_reimport_with_activate(instance: Instance) -> None:
    old = certificates.ensure_active(instance, "agent", "test")
    pfx = certificates.export(instance, old.thumbprint, PFX_PASSWORD, "test")
    certificates.lost(instance, old.thumbprint, "test")
    result = certificates.import_pfx(instance, pfx, PFX_PASSWORD, "agent", "test", activate=True)
    assert result.restored and result.certificate.state == "active"
    states = sorted(c.state for c in certificates.list_certificates(instance))
    assert states == ["active", "standby"]


# -- REST --------------------------------------------------------------------------------------------


@pytest.fixture
def client(instance: Instance) -> Iterator[TestClient]:
    with TestClient(create_app(instance)) as c:
        yield c


def test_api_list_and_activate(instance: Instance, client: TestClient) -> None:
    reader = {"Authorization": f"Bearer {apikeys.create(instance, 'r', Role.READER, 'test').token}"}
    admin = {"Authorization": f"Bearer {apikeys.create(instance, 'a', Role.ADMIN, 'test').token}"}
    first = certificates.ensure_active(instance, "agent", "test")
    second = certificates.create(instance, "agent", "test")
    assert client.get("/api/v1/certificates").status_code == 401
    listed = client.get("/api/v1/certificates", headers=reader)
    assert listed.status_code == 200
    assert {(c["thumbprint"], c["state"]) for c in listed.json()} == {
        (first.thumbprint, "active"),
        (second.thumbprint, "standby"),
    }
    assert client.get("/api/v1/certificates?scope=nope", headers=reader).status_code == 422
    one = client.get(f"/api/v1/certificates/{first.thumbprint}", headers=reader).json()
    assert one["pem"].startswith("-----BEGIN CERTIFICATE-----") and "PRIVATE KEY" not in json.dumps(one)
    refused = client.post(f"/api/v1/certificates/{second.thumbprint}/activate", headers=reader)
    assert refused.status_code == 403
    done = client.post(f"/api/v1/certificates/{second.thumbprint}/activate", headers=admin)
    assert done.status_code == 200 and done.json()["state"] == "active"
    missing = client.post(f"/api/v1/certificates/{'0' * 64}/activate", headers=admin)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


# -- the real `ams certs` command ---------------------------------------------------------------------


def test_cli_new_list_export_import_lost(instance: Instance, home: Home, tmp_path: Path) -> None:
    # Each `ams` run costs seconds: the details are tested in-process above, this is the path.
    instance.close()  # the subprocesses open it themselves
    made = run_ams("certs", "new", "--scope", "agent", "--json", home=home.root)
    assert made.returncode == 0, made.stderr
    thumb = json.loads(made.stdout)["thumbprint"]
    listed = run_ams("certs", "list", "--json", home=home.root)
    entries = json.loads(listed.stdout)
    assert [e["thumbprint"] for e in entries] == [thumb]
    assert set(entries[0]) >= {
        "thumbprint", "scope", "subject", "not_after", "state", "has_private_key",
        "current_passwords", "history_passwords",
    }  # fmt: skip
    assert entries[0]["state"] == "active" and entries[0]["has_private_key"] is True

    out = tmp_path / "agent.pfx"
    exported = run_ams(
        "certs",
        "export",
        thumb[:10],
        "--out",
        str(out),
        "--password-stdin",
        home=home.root,
        input=PFX_PASSWORD + "\n",
    )
    assert exported.returncode == 0, exported.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    assert crypto.import_pfx(out.read_bytes(), PFX_PASSWORD)[0] == crypto.certificate_from_pem(
        certificates.get(reopened := open_instance(home), thumb).pem
    )

    lost = run_ams("certs", "lost", thumb, "--json", home=home.root)
    assert lost.returncode == 0, lost.stderr
    replacement = json.loads(lost.stdout)["replacement"]["thumbprint"]
    junk = tmp_path / "junk.pfx"
    junk.write_bytes(b"")
    before = rows(reopened)
    refused = run_ams(
        "certs", "import", str(junk), "--scope", "agent", "--password-stdin", home=home.root, input="x\n"
    )
    assert refused.returncode == 50 and refused.stderr.startswith("error: the file is empty")
    assert refused.stderr.count("\n") == 1
    assert rows(reopened) == before

    restored = run_ams(
        "certs", "import", str(out), "--scope", "agent", "--password-stdin", "--json",
        home=home.root, input=PFX_PASSWORD + "\n",
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    body = json.loads(restored.stdout)
    assert body["restored"] is True and body["state"] == "standby" and body["has_private_key"] is True
    activated = run_ams("certs", "activate", thumb, home=home.root)
    assert activated.returncode == 0, activated.stderr
    try:
        states = {c.thumbprint: c.state for c in certificates.list_certificates(reopened)}
    finally:
        reopened.close()
    assert states == {thumb: "active", replacement: "standby"}


def test_cli_bad_scope_is_one_line(home: Home, instance: Instance) -> None:
    result = run_ams("certs", "new", "--scope", "forest", home=home.root)
    assert result.returncode == 12
    assert result.stderr.count("\n") == 1 and "scope" in result.stderr
    assert os.path.exists(home.root)


# -- PostgreSQL ---------------------------------------------------------------------------------------


@pytest.mark.postgres
def test_one_active_per_scope_on_postgresql(pg_server: Any, tmp_path: Path, clock: ManualClock) -> None:
    from ams.instance import create_instance

    url = pg_server.create_database()
    home = Home(tmp_path / "pg-home")
    create_instance(
        home, recovery_password=RECOVERY_PASSWORD, database_url_option=url, actor="test", clock=clock
    )
    inst = open_instance(home, clock)
    try:
        first = certificates.ensure_active(inst, "agent", "test")
        second = certificates.create(inst, "agent", "test")
        certificates.activate(inst, second.thumbprint, "test")
        states = {c.thumbprint: c.state for c in certificates.list_certificates(inst)}
        assert states == {first.thumbprint: "standby", second.thumbprint: "active"}
        with pytest.raises(IntegrityError), inst.transaction() as session:
            row = session.get(CertificateRow, first.thumbprint)
            assert row is not None
            row.state = "active"
        pfx = certificates.export(inst, second.thumbprint, PFX_PASSWORD, "test")
        lost = certificates.lost(inst, second.thumbprint, "test")
        assert lost.replacement is not None and certificates.private_key_der(inst, second.thumbprint) is None
        assert certificates.import_pfx(inst, pfx, PFX_PASSWORD, "agent", "test").restored
        assert certificates.private_key_der(inst, second.thumbprint) is not None
    finally:
        inst.close()
        pg_server.drop_database(url)
