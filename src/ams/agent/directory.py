"""Directory mode (``ams-agent run --mode directory``): the password lives on the computer object.

A legacy agent keeps its password where Windows LAPS keeps it, on its own computer object in
an AMS-hosted directory, over LDAP (ldap3), bound as that object's DN with its device token:

1. read its object's ``msLAPS-PasswordExpirationTime``; rotate when it is due, ``0`` (forced:
   ``ams device expire``, a lost certificate, a directory restore that moved the password
   back), or absent, or when the object holds no ``msLAPS-EncryptedPassword``;
2. ask the agent API's check-in (``GET /api/v1/agent/password?version=V``) for the
   directory's active certificate, the policy and the next version: the server hands out the
   certificate that is active now, which a directory attribute restored from a snapshot
   could not promise. When the server asks for a rotation the object did not (the device
   was reverted to an older state: reason ``rollback``), the device rotates too;
3. encrypt the new password to it and write the blob (and its expiry) on its object; the
   server test-decrypts it and keeps it in the vault's history before the write is accepted;
4. only then set it on the device; if that fails, write expiration time 0, so the next run
   rotates again (the device keeps its old password, which the vault keeps in its history);
5. record the new version in the state file.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ams.agent.client import AgentClient
from ams.agent.rotation import CheckIn, new_password, plan_rotation
from ams.agent.setters import Setter, SetterFailed
from ams.agent.state import AgentState, save_state
from ams.errors import (
    AgentDirectoryFailed,
    AgentPasswordNotSet,
    AgentServerAnswerInvalid,
    BadInput,
    NotWritable,
)
from ams.laps import ENCRYPTED_PASSWORD, EXPIRATION_TIME, from_filetime, to_filetime

__all__ = ["DirectoryObject", "LdapObjectClient", "check_ldap_url", "directory_check_in"]

log = logging.getLogger("ams.agent")


def _now() -> datetime:
    return datetime.now(UTC)


def check_ldap_url(url: str) -> str:
    """``ldap://host[:port]`` or ``ldaps://host[:port]``, nothing else."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("ldap", "ldaps") or not parts.hostname or parts.path not in ("", "/"):
        raise BadInput(f"--ldap-url {url!r} is not an LDAP address: write it like ldap://ams.example.com:389")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise BadInput(f"--ldap-url {url!r} has an invalid port") from None
    return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class DirectoryObject:
    """What the agent reads of its own object."""

    has_password: bool
    expiration: int | None  # the FILETIME, None when absent or not a number

    def due(self, now: datetime) -> str | None:
        """Why it must rotate now (a check-in reason), or None."""
        if not self.has_password:
            return "new"
        if self.expiration == 0:
            return "forced"
        if self.expiration is None:
            return "expired"
        expires = from_filetime(self.expiration)
        return "expired" if expires is None or expires <= now else None


class LdapObjectClient:
    """The agent's LDAP connection, bound as its own object (ldap3)."""

    def __init__(
        self, url: str, dn: str, token: str, *, ca_file: Path | None = None, timeout: float = 30
    ) -> None:
        with warnings.catch_warnings():
            # ldap3 2.9.1 imports pyasn1's old names (tagMap), which pyasn1 0.6 deprecates.
            warnings.simplefilter("ignore", DeprecationWarning)
            import ldap3  # here: only directory mode needs it

        self.url = check_ldap_url(url)
        self.dn = dn
        parts = urlsplit(self.url)
        tls = None
        if parts.scheme == "ldaps":
            tls = ldap3.Tls(
                validate=ssl.CERT_REQUIRED, ca_certs_file=str(ca_file) if ca_file is not None else None
            )
        server = ldap3.Server(
            parts.hostname or "",
            port=parts.port or (636 if parts.scheme == "ldaps" else 389),
            use_ssl=parts.scheme == "ldaps",
            tls=tls,
            get_info=ldap3.NONE,
            connect_timeout=timeout,
        )
        self._ldap3 = ldap3
        self._conn = ldap3.Connection(
            server, user=dn, password=token, raise_exceptions=False, receive_timeout=timeout, read_only=False
        )

    def __enter__(self) -> LdapObjectClient:
        try:
            bound = self._conn.bind()
        except self._ldap3.core.exceptions.LDAPException as exc:
            raise AgentDirectoryFailed(
                f"cannot reach the directory at {self.url}: {type(exc).__name__}: {str(exc)[:200]}; "
                "check --ldap-url and the network; nothing was changed"
            ) from None
        if not bound:
            raise AgentDirectoryFailed(
                f"the directory at {self.url} refused the bind as {self.dn}: {self._why()}; check the "
                "device's DN and token (`ams device show`); nothing was changed"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(self._ldap3.core.exceptions.LDAPException):
            self._conn.unbind()

    def _why(self) -> str:
        result = self._conn.result or {}
        message = str(result.get("message") or "").strip()
        code = f"{result.get('description', 'error')} ({result.get('result')})"
        return f"{code}: {message}" if message else code

    def read(self) -> DirectoryObject:
        try:
            found = self._conn.search(
                self.dn,
                "(objectClass=*)",
                search_scope=self._ldap3.BASE,
                attributes=[EXPIRATION_TIME, ENCRYPTED_PASSWORD],
            )
        except self._ldap3.core.exceptions.LDAPException as exc:
            raise AgentDirectoryFailed(f"reading {self.dn} failed: {type(exc).__name__}") from None
        entries = [e for e in self._conn.response or [] if e.get("type") == "searchResEntry"]
        if not found or not entries:
            raise AgentDirectoryFailed(
                f"cannot read {self.dn} at {self.url}: {self._why()}; nothing was changed"
            )
        raw: dict[str, Any] = {k.lower(): v for k, v in entries[0].get("raw_attributes", {}).items()}
        expiration: int | None = None
        values = raw.get(EXPIRATION_TIME.lower()) or []
        if values:
            text = bytes(values[0]).decode("ascii", "replace").strip()
            expiration = int(text) if text.isdigit() else None
        return DirectoryObject(bool(raw.get(ENCRYPTED_PASSWORD.lower())), expiration)

    def write(self, changes: dict[str, bytes | str]) -> None:
        replace = self._ldap3.MODIFY_REPLACE
        try:
            done = self._conn.modify(self.dn, {name: [(replace, [value])] for name, value in changes.items()})
        except self._ldap3.core.exceptions.LDAPException as exc:
            raise AgentDirectoryFailed(f"writing {self.dn} failed: {type(exc).__name__}") from None
        if not done:
            raise AgentDirectoryFailed(
                f"the directory refused the write on {self.dn}: {self._why()}; the device keeps its password"
            )


def directory_check_in(
    state: AgentState,
    state_path: Path,
    client: AgentClient,
    ldap: LdapObjectClient,
    setter: Setter,
    *,
    account: str | None = None,
    now: Callable[[], datetime] = _now,
) -> CheckIn:
    """One run in directory mode (see the module's docstring for the order)."""
    reason = ldap.read().due(now())
    answer = client.check(state.last_version)
    if not isinstance(answer.get("rotate"), bool) or "next_version" not in answer:
        raise AgentServerAnswerInvalid("the server's check-in answer has no 'rotate': is it an AMS server?")
    if reason is None and answer["rotate"]:
        # The directory says nothing is due, the vault does: a device reverted to an older
        # state (reason rollback), or a forced rotation whose 0 could not be written.
        reason = str(answer.get("reason"))
    if reason is None:
        return CheckIn(rotated=False, reason=None, version=state.last_version)
    # The directory (or the vault) decides that it is time; the server says with what.
    plan = plan_rotation({**answer, "reason": reason}, account)
    log.info("the directory asks for a new password (reason: %s, version %d)", reason, plan.next_version)
    password, blob = new_password(plan, now)
    expires = now() + timedelta(days=plan.max_age_days or 30)
    ldap.write({ENCRYPTED_PASSWORD: blob, EXPIRATION_TIME: str(to_filetime(expires))})
    try:
        setter.set(plan.account, password)
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, the next run must rotate again
        why = str(exc) if isinstance(exc, SetterFailed) else f"unexpected {type(exc).__name__}"
        try:
            ldap.write({EXPIRATION_TIME: "0"})
            again = "the next run rotates again"
        except AgentDirectoryFailed:
            again = "and the expiration time could not be reset: run `ams device expire` for it"
        raise AgentPasswordNotSet(
            f"could not set the new password of {plan.account} with {setter.description} ({why}); the "
            f"device keeps its old password, which AMS keeps in its history; {again}"
        ) from None
    log.info("set the new password of %s with %s", plan.account, setter.description)
    try:
        save_state(state_path, state.with_version(plan.next_version))
    except OSError as exc:
        raise NotWritable(
            f"the new password of {plan.account} is set and stored on {state.dn}, but {state_path} could "
            f"not be written ({exc.strerror or type(exc).__name__}): fix that"
        ) from None
    return CheckIn(
        rotated=True,
        reason=reason,
        version=plan.next_version,
        account=plan.account,
        thumbprint=plan.thumbprint,
    )
