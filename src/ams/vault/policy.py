"""The password policy of a scope: length, maximum age, history retention, the account.

A scope without a row of its own follows the ``default`` row; without that, the built-in
defaults below (keep 30 passwords, 0 days).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import Any

from sqlalchemy.orm import Session

from ams import audit
from ams.db.models.vault import PasswordPolicyRow
from ams.errors import BadInput
from ams.instance import Instance
from ams.vault import generation

__all__ = ["DEFAULT_SCOPE", "PasswordPolicy", "get_policy", "set_policy"]

DEFAULT_SCOPE = "default"
_ACCOUNT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.$-]{0,63}$")
_SCOPE = re.compile(r"^(default|agent|d-[0-9a-f]{10})$")


@dataclass(frozen=True)
class PasswordPolicy:
    scope: str
    length: int = 20
    max_age_days: int = 30
    history_keep_count: int = 30
    history_keep_days: int = 0
    account: str = "Administrator"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def for_agent(self) -> dict[str, Any]:
        """The part the agent API sends to devices."""
        return {"length": self.length, "max_age_days": self.max_age_days, "account": self.account}


_LIMITS = {
    "length": (12, 256),
    "max_age_days": (1, 3650),
    "history_keep_count": (0, 100000),
    "history_keep_days": (0, 36500),
}


def check_scope(scope: str) -> str:
    if not isinstance(scope, str) or not _SCOPE.fullmatch(scope):
        raise BadInput(
            f"unknown scope {scope!r}: use agent, a directory id (d- and 10 hex digits) or default"
        )
    return scope


def _from_row(row: PasswordPolicyRow, scope: str) -> PasswordPolicy:
    return PasswordPolicy(
        scope=scope,
        length=row.length,
        max_age_days=row.max_age_days,
        history_keep_count=row.history_keep_count,
        history_keep_days=row.history_keep_days,
        account=row.account,
    )


def get_policy(session: Session, scope: str) -> PasswordPolicy:
    """The policy in force for ``scope`` (its own row, else the default row, else built in)."""
    row = session.get(PasswordPolicyRow, scope)
    if row is None and scope != DEFAULT_SCOPE:
        row = session.get(PasswordPolicyRow, DEFAULT_SCOPE)
    return _from_row(row, scope) if row is not None else PasswordPolicy(scope=scope)


def set_policy(instance: Instance, scope: str, actor: str, **changes: Any) -> PasswordPolicy:
    """Change some values of a scope's policy; the others keep what is in force now."""
    check_scope(scope)
    changes = {k: v for k, v in changes.items() if v is not None}
    for key, value in changes.items():
        if key == "account":
            if not isinstance(value, str) or not _ACCOUNT.match(value):
                raise BadInput(
                    f"account {value!r} is not a valid account name: letters, digits, _ . $ - "
                    "(at most 64, no spaces or colons)"
                )
        elif key in _LIMITS:
            low, high = _LIMITS[key]
            if not isinstance(value, int) or not low <= value <= high:
                raise BadInput(f"{key.replace('_', '-')} must be a whole number from {low} to {high}")
        else:
            raise BadInput(f"unknown policy setting {key!r}")
    if not changes:
        with instance.session() as session:
            return get_policy(session, scope)
    with instance.transaction() as session:
        policy = replace(get_policy(session, scope), **changes)
        row = session.get(PasswordPolicyRow, scope)
        if row is None:
            row = PasswordPolicyRow(scope=scope)
            session.add(row)
        row.length = policy.length
        row.max_age_days = policy.max_age_days
        row.history_keep_count = policy.history_keep_count
        row.history_keep_days = policy.history_keep_days
        row.account = policy.account
        row.updated_at = instance.clock.now()
        generation.bump(session)  # every process reads the new policy at its next request
        audit.record(
            session,
            instance.clock,
            audit.Event.PASSWORD_POLICY_CHANGED,
            actor=actor,
            target=scope,
            details=policy.to_dict(),
        )
    return policy
