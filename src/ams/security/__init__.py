"""The master key on this machine, the recovery password, and password rules.

Modules: ``keyring`` (the master key of an open instance), ``service_key`` (the service key
and the wrappings, without the database layer), ``policy`` (password strength). Import
from them directly; only the password rules are re-exported here, since this package must
stay as light as ``service_key``.
"""

from __future__ import annotations

from ams.security.policy import MIN_PASSWORD_LENGTH, check_password_strength

__all__ = ["MIN_PASSWORD_LENGTH", "check_password_strength"]
