"""ams.vault.legacy: devices bound to computer objects, their passwords stored on the objects."""

from __future__ import annotations

import base64
import secrets
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from ams import audit
from ams.clock import ManualClock
from ams.directory import directories, objects, restore, snapshots
from ams.directory.entry import Entry
from ams.errors import (
    DeviceWriteNotAllowed,
    DirectoryBindingInvalid,
    PasswordUndecryptable,
)
from ams.home import Home
from ams.instance import Instance, create_instance, open_instance
from ams.vault import certificates, devices, legacy, passwords, regkeys
from conftest import RECOVERY_PASSWORD
from vault_support import _small_keys, make_blob  # noqa: F401 - _small_keys is a fixture

SUFFIX = "DC=corp,DC=example,DC=com"
PC1 = f"CN=PC1,OU=Computers,{SUFFIX}"
PC2 = f"CN=PC2,OU=Computers,{SUFFIX}"


def _events(instance: Instance, event: audit.Event) -> list[audit.EventRecord]:
    with instance.session() as session:
        return audit.list_events(session, event_id=event)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Home, str]:
    """An instance with a directory and its computer objects, made once per module (the
    recovery password's Argon2id makes each new instance cost a second): tests copy it."""
    home = Home(tmp_path_factory.mktemp("legacy") / "home")
    clock = ManualClock()
    create_instance(home, recovery_password=RECOVERY_PASSWORD, actor="test", clock=clock)
    made = open_instance(home, clock)
    try:
        info = directories.create(made, dns_name="corp.example.com", short_name="CORP", actor="test")
        for dn, classes in (
            (SUFFIX, ["top", "domain"]),
            (f"OU=Computers,{SUFFIX}", ["top", "organizationalUnit"]),
            (PC1, ["top", "computer"]),
            (PC2, ["top", "computer"]),
        ):
            objects.add(made, info.id, Entry(dn, classes, {"description": ["x"]}), actor="test")
    finally:
        made.close()
    return home, info.id


@pytest.fixture
def instance(template: tuple[Home, str], tmp_path: Path, clock: ManualClock) -> Iterator[Instance]:
    copy = Home(tmp_path / "home")
    shutil.copytree(template[0].root, copy.root, symlinks=True)
    opened = open_instance(copy, clock)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def directory_id(template: tuple[Home, str]) -> str:
    return template[1]


def _register(instance: Instance, directory_id: str, dn: str, name: str) -> tuple[str, str]:
    key = regkeys.create(instance, f"key-{name}-{secrets.token_hex(3)}", "test").key
    made = devices.register(instance, key, name, scope=directory_id, dn=dn)
    return made.device_id, made.token


def _bind(instance: Instance, directory_id: str, dn: str, token: str) -> legacy.BoundDevice:
    device = legacy.authenticate_bind(instance, directory_id, dn, token)
    assert device is not None
    return device


def _blob(
    instance: Instance, scope: str, version: int, password: str, account: str = "Administrator"
) -> bytes:
    pem = certificates.ensure_active(instance, scope, "test").pem
    return base64.b64decode(make_blob(pem, account, password, version))


def _rotate(
    instance: Instance, directory_id: str, device: legacy.BoundDevice, dn: str, version: int
) -> tuple[str, bytes]:
    password = secrets.token_urlsafe(15)
    blob = _blob(instance, directory_id, version, password)
    legacy.device_modify(instance, device, directory_id, dn, [("replace", legacy.ENCRYPTED_PASSWORD, [blob])])
    return password, blob


def _expiry(instance: Instance, directory_id: str, dn: str) -> list[object]:
    return objects.get(instance, directory_id, dn).get(legacy.EXPIRATION_TIME)


# -- binding ----------------------------------------------------------------------------------


def test_registration_binds_a_device_to_an_existing_object_only_once(
    instance: Instance, directory_id: str
) -> None:
    device_id, _ = _register(instance, directory_id, "cn=pc1, ou=computers,dc=corp,dc=example,dc=com", "pc1")
    info = devices.show(instance, device_id)
    assert (info.scope, info.directory_dn) == (directory_id, PC1)  # the DN as the directory holds it
    [event] = _events(instance, audit.Event.DEVICE_REGISTERED)
    assert event.details["dn"] == PC1

    key = regkeys.create(instance, "another", "test").key
    with pytest.raises(DirectoryBindingInvalid, match="another device is bound"):
        devices.register(instance, key, "pc1-again", scope=directory_id, dn=PC1)
    with pytest.raises(DirectoryBindingInvalid, match="has no entry"):
        devices.register(instance, key, "pc9", scope=directory_id, dn=f"CN=PC9,{SUFFIX}")
    with pytest.raises(DirectoryBindingInvalid, match="scope is 'agent'"):
        devices.register(instance, key, "pc2", dn=PC2)
    assert len(devices.list_devices(instance)) == 1  # nothing was registered by the refusals

    devices.disable(instance, device_id, "test")  # a disabled device frees its object
    replacement = devices.register(instance, key, "pc1-new", scope=directory_id, dn=PC1)
    assert devices.show(instance, replacement.device_id).directory_dn == PC1


def test_an_administrator_registers_a_bound_device_without_a_key(
    instance: Instance, directory_id: str
) -> None:
    made = legacy.register_bound(instance, "pc2", directory_id, PC2, "admin")
    assert _bind(instance, directory_id, PC2, made.token).id == made.device_id
    with pytest.raises(DirectoryBindingInvalid):
        legacy.register_bound(instance, "pc2b", directory_id, PC2, "admin")


# -- LDAP binds and what a device sees ----------------------------------------------------------


def test_a_bind_opens_a_device_only_with_its_own_dn_and_token(instance: Instance, directory_id: str) -> None:
    pc1, token1 = _register(instance, directory_id, PC1, "pc1")
    pc2, token2 = _register(instance, directory_id, PC2, "pc2")
    device = _bind(instance, directory_id, PC1.upper(), token1)
    assert (device.device_id, device.scope, device.dn_norm) == (pc1, directory_id, PC1.lower())
    assert devices.show(instance, pc1).last_seen_at is not None

    wrong = token1[:-4] + ("aaaa" if not token1.endswith("aaaa") else "bbbb")
    assert legacy.authenticate_bind(instance, directory_id, PC1, wrong) is None
    assert legacy.authenticate_bind(instance, directory_id, PC1, token2) is None  # pc2's token
    assert legacy.authenticate_bind(instance, directory_id, f"CN=PC9,{SUFFIX}", token1) is None
    assert legacy.authenticate_bind(instance, "d-0000000000", PC1, token1) is None  # other directory
    assert legacy.authenticate_bind(instance, directory_id, f"CN=Admin,{SUFFIX}", "Some-password-1") is None
    assert legacy.authenticate_bind(instance, directory_id, "not a DN", token1) is None

    key = regkeys.create(instance, "approval", "test", approval=True).key
    pending = devices.register(instance, key, "pc3", scope=directory_id, dn=f"OU=Computers,{SUFFIX}")
    assert legacy.authenticate_bind(instance, directory_id, f"OU=Computers,{SUFFIX}", pending.token) is None
    devices.disable(instance, pc2, "test")
    assert legacy.authenticate_bind(instance, directory_id, PC2, token2) is None


def test_a_device_sees_its_own_password_attributes_and_no_other_devices(
    instance: Instance, directory_id: str
) -> None:
    _, token1 = _register(instance, directory_id, PC1, "pc1")
    _, token2 = _register(instance, directory_id, PC2, "pc2")
    device1 = _bind(instance, directory_id, PC1, token1)
    device2 = _bind(instance, directory_id, PC2, token2)
    _rotate(instance, directory_id, device1, PC1, 1)
    entry = objects.get(instance, directory_id, PC1)
    assert legacy.visible_attributes(instance, device1, entry) == {
        "objectClass",
        "description",
        legacy.ENCRYPTED_PASSWORD,
        legacy.EXPIRATION_TIME,
    }
    assert legacy.visible_attributes(instance, device2, entry) == {"objectClass", "description"}


# -- writes -------------------------------------------------------------------------------------


def test_a_blob_written_on_the_object_is_stored_in_the_vault_and_reads_back(
    instance: Instance, directory_id: str, clock: ManualClock
) -> None:
    device_id, token = _register(instance, directory_id, PC1, "pc1")
    device = _bind(instance, directory_id, PC1, token)
    first, _ = _rotate(instance, directory_id, device, PC1, 1)
    clock.advance(timedelta(days=1))
    second, blob = _rotate(instance, directory_id, device, PC1, 2)

    entry = objects.get(instance, directory_id, PC1)
    assert entry.get(legacy.ENCRYPTED_PASSWORD) == [blob]
    current = passwords.read(instance, device_id, "admin")
    assert (current["password"], current["version"]) == (second, 2)
    directory_cert = certificates.active_certificate(instance, directory_id)
    assert directory_cert is not None and current["certificate_thumbprint"] == directory_cert.thumbprint
    # The object's expiry is the vault's (the policy's maximum age), as FILETIME text.
    expires = devices.show(instance, device_id).password_expires_at
    assert expires is not None
    assert entry.get(legacy.EXPIRATION_TIME) == [str(legacy.to_filetime(expires))]
    assert legacy.from_filetime(legacy.to_filetime(expires)) == expires
    history = passwords.read(instance, device_id, "admin", history=True)["history"]
    assert [(h["version"], h["password"]) for h in history] == [(1, first)]
    assert [e.details["version"] for e in _events(instance, audit.Event.PASSWORD_ROTATED)] == [1, 2]


def test_a_device_writes_nothing_but_its_two_attributes_of_its_own_object(
    instance: Instance, directory_id: str
) -> None:
    _, token1 = _register(instance, directory_id, PC1, "pc1")
    _, token2 = _register(instance, directory_id, PC2, "pc2")
    device1 = _bind(instance, directory_id, PC1, token1)
    _rotate(instance, directory_id, _bind(instance, directory_id, PC2, token2), PC2, 1)
    before = {dn: objects.get(instance, directory_id, dn) for dn in (PC1, PC2)}
    blob = _blob(instance, directory_id, 1, "Another-Password-1")
    refused = [
        (PC1, [("replace", "description", ["mine now"])]),
        (PC1, [("replace", legacy.EXPIRATION_TIME, ["0"]), ("add", "member", [PC2])]),
        (PC1, [("delete", legacy.ENCRYPTED_PASSWORD, [])]),
        (PC2, [("replace", legacy.ENCRYPTED_PASSWORD, [blob])]),  # another device's object
        (PC2, [("replace", legacy.EXPIRATION_TIME, ["0"])]),
        (SUFFIX, [("replace", legacy.EXPIRATION_TIME, ["0"])]),
    ]
    for dn, changes in refused:
        with pytest.raises(DeviceWriteNotAllowed):
            legacy.device_modify(instance, device1, directory_id, dn, changes)
    assert {dn: objects.get(instance, directory_id, dn) for dn in (PC1, PC2)} == before
    assert len(_events(instance, audit.Event.DEVICE_DIRECTORY_WRITE_REFUSED)) == len(refused)


def test_a_blob_the_directory_certificate_does_not_open_is_refused(
    instance: Instance, directory_id: str
) -> None:
    device_id, token = _register(instance, directory_id, PC1, "pc1")
    device = _bind(instance, directory_id, PC1, token)
    agent_scope_blob = _blob(instance, "agent", 1, "Wrong-Certificate-1")
    for bad in (agent_scope_blob, b"AMSP not a blob"):
        with pytest.raises(PasswordUndecryptable):
            legacy.device_modify(
                instance, device, directory_id, PC1, {"replace": {legacy.ENCRYPTED_PASSWORD: [bad]}}
            )
    assert objects.get(instance, directory_id, PC1).get(legacy.ENCRYPTED_PASSWORD) == []
    assert devices.show(instance, device_id).current_version is None
    assert len(_events(instance, audit.Event.PASSWORD_REJECTED)) == 2


# -- forced rotations ---------------------------------------------------------------------------


def test_expire_and_a_lost_directory_certificate_force_exactly_the_directory_devices(
    instance: Instance, directory_id: str
) -> None:
    pc1, token1 = _register(instance, directory_id, PC1, "pc1")
    pc2, token2 = _register(instance, directory_id, PC2, "pc2")
    key = regkeys.create(instance, "agent-key", "test").key
    other = devices.register(instance, key, "linux1")
    for dn, token in ((PC1, token1), (PC2, token2)):
        _rotate(instance, directory_id, _bind(instance, directory_id, dn, token), dn, 1)
    assert _expiry(instance, directory_id, PC1) != ["0"]

    assert devices.expire(instance, "admin", device=pc1) == [pc1]
    assert _expiry(instance, directory_id, PC1) == ["0"]
    assert _expiry(instance, directory_id, PC2) != ["0"]

    old = certificates.active_certificate(instance, directory_id)
    assert old is not None
    result = certificates.lost(instance, old.thumbprint, "admin")
    assert result.replacement is not None and result.replacement.scope == directory_id
    assert _expiry(instance, directory_id, PC2) == ["0"]
    assert {d.id: d.rotation_forced for d in devices.list_devices(instance)} == {
        pc1: True,
        pc2: True,
        other.device_id: False,
    }
    [lost_event] = _events(instance, audit.Event.CERTIFICATE_LOST)
    assert lost_event.details["forced"] == 2


# -- after a directory restore ------------------------------------------------------------------


def test_a_snapshot_restore_detects_and_forces_the_devices_whose_password_went_back(
    instance: Instance, directory_id: str
) -> None:
    pc1, token1 = _register(instance, directory_id, PC1, "pc1")
    pc2, token2 = _register(instance, directory_id, PC2, "pc2")
    device1 = _bind(instance, directory_id, PC1, token1)
    device2 = _bind(instance, directory_id, PC2, token2)
    _rotate(instance, directory_id, device1, PC1, 1)
    _rotate(instance, directory_id, device2, PC2, 1)
    snap = snapshots.create(instance, directory_id, actor="test")
    _rotate(instance, directory_id, device1, PC1, 2)  # only PC1 moves on after the snapshot

    snapshots.restore(instance, snap.id, actor="admin")
    [done] = restore.run_pending(instance)
    assert done.state == "done"

    [completed] = _events(instance, audit.Event.DIRECTORY_RESTORE_COMPLETED)
    assert completed.details["passwords_rolled_back"] == [pc1]
    [rolled] = _events(instance, audit.Event.DIRECTORY_PASSWORDS_ROLLED_BACK)
    assert (rolled.target, rolled.details["restored_version"], rolled.details["current_version"]) == (
        pc1,
        1,
        2,
    )
    assert _expiry(instance, directory_id, PC1) == ["0"]
    assert _expiry(instance, directory_id, PC2) != ["0"]
    forced = {d.id: d.rotation_forced for d in devices.list_devices(instance)}
    assert forced == {pc1: True, pc2: False}
    # The vault still holds version 2 as current: nothing of the history was lost.
    assert passwords.read(instance, pc1, "admin")["version"] == 2

    # The device rotates again; a further restore of the same snapshot catches both now.
    _rotate(instance, directory_id, device1, PC1, 3)
    _rotate(instance, directory_id, device2, PC2, 2)
    snapshots.restore(instance, snap.id, actor="admin")
    restore.run_pending(instance)
    latest = _events(instance, audit.Event.DIRECTORY_RESTORE_COMPLETED)[-1]
    assert sorted(latest.details["passwords_rolled_back"]) == sorted([pc1, pc2])
