"""One check-in: ask the server, and when it says so, rotate the device's password.

The order never loses a password:
1. ask (``GET /api/v1/agent/password?version=<last version>``);
2. generate the password, encrypt it to the certificate the server named, report it
   (``POST``) — the server now holds it, and the previous one in its history;
3. only after the server accepted it, set it on the device;
4. if setting fails, undo the report (``DELETE`` within the 60-second rollback window),
   so the server's current password is again the one the device still has;
5. record the new version in the state file.
A crash or failure between any two steps leaves the server holding every password the
device may have; the next check-in repairs the rest (a version the server does not expect
means: rotate, reason "rollback").
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ams.agent.client import AgentClient
from ams.agent.passwords import MAX_LENGTH, MIN_LENGTH, generate_password
from ams.agent.setters import Setter, SetterFailed, valid_account
from ams.agent.state import AgentState, save_state
from ams.crypto.blob import encrypt_password
from ams.crypto.certs import certificate_from_pem, thumbprint
from ams.errors import AgentPasswordNotSet, AgentServerAnswerInvalid, AMSError, NotWritable

__all__ = ["ROLLBACK_WINDOW_SECONDS", "CheckIn", "RotationPlan", "check_in", "new_password", "plan_rotation"]

log = logging.getLogger("ams.agent")

# The server accepts an undo for 60 s after the report; stop trying a little before.
ROLLBACK_WINDOW_SECONDS = 60.0
_UNDO_MARGIN_SECONDS = 5.0
REASONS = frozenset({"new", "expired", "forced", "rollback"})


@dataclass(frozen=True)
class CheckIn:
    """What a check-in did (never the password)."""

    rotated: bool
    reason: str | None
    version: int | None
    account: str | None = None
    thumbprint: str | None = None

    def describe(self) -> str:
        if not self.rotated:
            return f"checked in: password version {self.version} is current; nothing to do"
        return (
            f"rotated the password of {self.account} to version {self.version} "
            f"(reason: {self.reason}), encrypted to certificate {self.thumbprint}"
        )


def _now() -> datetime:
    return datetime.now(UTC)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class RotationPlan:
    """What the server's check-in answer asks for, checked: never the password."""

    reason: str
    next_version: int
    length: int
    account: str
    certificate_der: bytes
    thumbprint: str
    max_age_days: int | None


def plan_rotation(answer: dict[str, Any], account: str | None) -> RotationPlan:
    """The rotation a check-in answer (``GET /api/v1/agent/password``) asks for, with its
    certificate checked against the thumbprint it names; AgentServerAnswerInvalid otherwise."""
    reason = answer.get("reason")
    next_version = _int(answer.get("next_version"))
    policy = answer.get("policy")
    certificate = answer.get("certificate")
    if (
        reason not in REASONS
        or next_version is None
        or not isinstance(policy, dict)
        or not isinstance(certificate, dict)
    ):
        raise AgentServerAnswerInvalid(
            "the server asked for a rotation without a valid reason, next version, policy and "
            "certificate: is the server an AMS of the same version? Nothing was changed"
        )
    length = _int(policy.get("length"))
    if length is None or not MIN_LENGTH <= length <= MAX_LENGTH:
        raise AgentServerAnswerInvalid(
            f"the server's password policy asks for length {policy.get('length')!r}; ams-agent makes "
            f"passwords of {MIN_LENGTH}-{MAX_LENGTH} characters: fix the policy. Nothing was changed"
        )
    account = account or policy.get("account")
    if not isinstance(account, str) or not valid_account(account):
        raise AgentServerAnswerInvalid(
            f"the server's policy names no usable account ({account!r}): pass --account NAME. "
            "Nothing was changed"
        )
    named = certificate.get("thumbprint")
    try:
        der = certificate_from_pem(str(certificate.get("pem") or ""))
    except AMSError:
        raise AgentServerAnswerInvalid(
            "the certificate in the server's answer is not a readable PEM certificate; nothing was changed"
        ) from None
    actual = thumbprint(der)
    if not isinstance(named, str) or named.lower() != actual:
        raise AgentServerAnswerInvalid(
            f"the server named certificate {named!r} but sent one whose thumbprint is {actual}: "
            "refusing to encrypt the new password to it. Nothing was changed"
        )
    max_age = _int(policy.get("max_age_days"))
    return RotationPlan(reason, next_version, length, account, der, actual, max_age)


def new_password(plan: RotationPlan, now: Callable[[], datetime] = _now) -> tuple[str, bytes]:
    """A new password for ``plan`` and its blob, encrypted to the plan's certificate."""
    password = generate_password(plan.length)
    plaintext = json.dumps(
        {
            "account": plan.account,
            "password": password,
            "created_at": now().astimezone(UTC).isoformat(timespec="seconds"),
            "version": plan.next_version,
        },
        sort_keys=True,
    ).encode("utf-8")
    return password, encrypt_password(plan.certificate_der, plaintext)


def check_in(
    state: AgentState,
    state_path: Path,
    client: AgentClient,
    setter: Setter,
    *,
    account: str | None = None,
    now: Callable[[], datetime] = _now,
) -> CheckIn:
    answer = client.check(state.last_version)
    if not isinstance(answer.get("rotate"), bool):
        raise AgentServerAnswerInvalid("the server's check-in answer has no 'rotate': is it an AMS server?")
    current = _int(answer.get("current_version"))
    if not answer["rotate"]:
        return CheckIn(rotated=False, reason=None, version=current)

    plan = plan_rotation(answer, account)
    reason, next_version, account = plan.reason, plan.next_version, plan.account
    log.info("the server asks for a new password (reason: %s, version %d)", reason, next_version)

    password, blob = new_password(plan, now)
    accepted = client.report(account, next_version, base64.b64encode(blob).decode("ascii"))
    undo_deadline = time.monotonic() + ROLLBACK_WINDOW_SECONDS - _UNDO_MARGIN_SECONDS
    reported = _int(accepted.get("version"))
    version = next_version if reported is None else reported

    try:
        setter.set(account, password)
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, the report must be undone
        why = str(exc) if isinstance(exc, SetterFailed) else f"unexpected {type(exc).__name__}"
        _undo(client, accepted["request_id"], account, version, setter, why, undo_deadline)
    log.info("set the new password of %s with %s", account, setter.description)

    try:
        save_state(state_path, state.with_version(version))
    except OSError as exc:
        raise NotWritable(
            f"the new password of {account} is set and the server holds it, but {state_path} could not "
            f"be written ({exc.strerror or type(exc).__name__}): fix that; the next check-in rotates "
            "again (reason rollback)"
        ) from None
    return CheckIn(rotated=True, reason=reason, version=version, account=account, thumbprint=plan.thumbprint)


def _undo(
    client: AgentClient,
    request_id: str,
    account: str,
    version: int,
    setter: Setter,
    why: str,
    deadline: float,
) -> None:
    """The password was reported but not set: take the report back, then fail loudly."""
    log.error("could not set the new password of %s with %s: %s", account, setter.description, why)
    try:
        answer = client.undo(request_id, deadline=deadline)
    except AMSError as exc:
        raise AgentPasswordNotSet(
            f"could not set the new password of {account} with {setter.description} ({why}), and the "
            f"server's version {version} could not be undone ({exc.message}). The device keeps its old "
            "password, which the server keeps in the device's history; the next check-in rotates again"
        ) from None
    restored = _int(answer.get("restored_version"))
    raise AgentPasswordNotSet(
        f"could not set the new password of {account} with {setter.description} ({why}); the server's "
        f"update was undone (current version again: {restored}). The device keeps its old password"
    )
