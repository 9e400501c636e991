"""Windows LAPS's attributes, as AMS keeps directory-stored passwords in them (docs/formats.md).

Shared by the server (ams.vault.legacy) and ams-agent's directory mode, so it imports
nothing: the agent runs on devices and loads no server code.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

__all__ = ["ENCRYPTED_PASSWORD", "EXPIRATION_TIME", "MAX_FILETIME", "from_filetime", "to_filetime"]

# The AMS password blob (binary), encrypted to the directory's active certificate.
ENCRYPTED_PASSWORD = "msLAPS-EncryptedPassword"  # noqa: S105 - an attribute name
# When the password must change: a FILETIME as decimal text; 0 means "rotate now".
EXPIRATION_TIME = "msLAPS-PasswordExpirationTime"
MAX_FILETIME = 2**63 - 1
_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)


def to_filetime(moment: datetime) -> int:
    """A Windows FILETIME: 100-nanosecond intervals since 1601-01-01 UTC."""
    delta = moment.astimezone(UTC) - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 10_000_000 + delta.microseconds * 10


def from_filetime(value: int) -> datetime | None:
    """The moment of a FILETIME; None for 0 or less ("rotate now")."""
    if value <= 0:
        return None
    return _EPOCH + timedelta(microseconds=value // 10)
