"""The master key on this machine, the recovery password, and password rules."""

from __future__ import annotations

from ams.security.keyring import Keyring, MasterKeyState, ServiceKeySource
from ams.security.policy import MIN_PASSWORD_LENGTH, check_password_strength

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "Keyring",
    "MasterKeyState",
    "ServiceKeySource",
    "check_password_strength",
]
