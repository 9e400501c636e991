"""The one error hierarchy of AMS.

Every error a user can cause or meet has a stable ``code`` (a short identifier that
scripts may match on), a stable CLI ``exit_status`` in the range 10-99, an
``http_status`` for the API, and a message that says what is wrong and what to do.
``tests/test_errors.py`` pins the codes and statuses; ``python -m ams.errors`` prints the
table that docs/errors.md carries, and a test checks the two agree.

Exit statuses 1 and 2 are left to the runtime: 1 for an unexpected internal error, 2 for
a command-line usage error (unknown option, missing argument).
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AMSError",
    "AlreadyExists",
    "AuthenticationRequired",
    "BadInput",
    "Conflict",
    "DatabaseUnreadable",
    "DecryptionFailed",
    "InstanceExists",
    "InstanceNotFound",
    "InternalError",
    "MasterKeyLocked",
    "NotFound",
    "NotWritable",
    "PermissionDenied",
    "SchemaMismatch",
    "ServiceRunning",
    "WeakPassword",
    "WrongPassword",
    "all_errors",
]


class AMSError(Exception):
    """Base class: an error with a stable code, exit status and HTTP status."""

    code: ClassVar[str] = "ams_error"
    exit_status: ClassVar[int] = 10
    http_status: ClassVar[int] = 500
    summary: ClassVar[str] = "an AMS operation failed"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.summary
        super().__init__(self.message)

    def to_dict(self) -> dict[str, object]:
        return {"error": self.code, "message": self.message}


class InternalError(AMSError):
    code = "internal_error"
    exit_status = 11
    http_status = 500
    summary = "an internal error occurred; run again with --debug and report it"


class BadInput(AMSError):
    code = "bad_input"
    exit_status = 12
    http_status = 422
    summary = "the input is not valid"


class NotFound(AMSError):
    code = "not_found"
    exit_status = 13
    http_status = 404
    summary = "no such object"


class AlreadyExists(AMSError):
    code = "already_exists"
    exit_status = 14
    http_status = 409
    summary = "the object already exists"


class Conflict(AMSError):
    code = "conflict"
    exit_status = 15
    http_status = 409
    summary = "the operation conflicts with the current state"


class InstanceNotFound(AMSError):
    code = "instance_not_found"
    exit_status = 20
    http_status = 500
    summary = "no AMS instance here: run `ams init` first"


class InstanceExists(AMSError):
    code = "instance_exists"
    exit_status = 21
    http_status = 409
    summary = "an AMS instance already exists here; nothing was changed"


class NotWritable(AMSError):
    code = "not_writable"
    exit_status = 22
    http_status = 500
    summary = "a folder AMS must write to is not writable"


class DatabaseUnreadable(AMSError):
    code = "database_unreadable"
    exit_status = 23
    http_status = 500
    summary = "the AMS database cannot be read: restore it with `ams backup restore`"


class SchemaMismatch(AMSError):
    code = "schema_mismatch"
    exit_status = 24
    http_status = 500
    summary = "the database schema does not match this version of AMS"


class ServiceRunning(AMSError):
    code = "service_running"
    exit_status = 25
    http_status = 409
    summary = "`ams serve` is already running on this home"


class MasterKeyLocked(AMSError):
    code = "master_key_locked"
    exit_status = 30
    http_status = 503
    summary = "master key locked: run `ams security unlock`"


class WrongPassword(AMSError):
    code = "wrong_password"
    exit_status = 31
    http_status = 403
    summary = "the password is wrong; nothing was changed"


class DecryptionFailed(AMSError):
    code = "decryption_failed"
    exit_status = 33
    http_status = 422
    summary = "the data could not be decrypted: it was altered, or the key is not the right one"


class WeakPassword(AMSError):
    code = "weak_password"
    exit_status = 32
    http_status = 422
    summary = "the password is too weak"


class AuthenticationRequired(AMSError):
    code = "authentication_required"
    exit_status = 40
    http_status = 401
    summary = "authentication required: send `Authorization: Bearer <key id>.<secret>`"


class PermissionDenied(AMSError):
    code = "permission_denied"
    exit_status = 41
    http_status = 403
    summary = "this API key's role may not do that"


def all_errors() -> list[type[AMSError]]:
    """Every error class, the base first, in a stable order (by exit status)."""
    seen: list[type[AMSError]] = []
    stack: list[type[AMSError]] = [AMSError]
    while stack:
        cls = stack.pop()
        if cls not in seen:
            seen.append(cls)
            stack.extend(cls.__subclasses__())
    return sorted(seen, key=lambda c: c.exit_status)


def errors_table() -> str:
    """The Markdown table of docs/errors.md."""
    lines = [
        "| code | exit status | HTTP status | meaning |",
        "|---|---|---|---|",
    ]
    for cls in all_errors():
        lines.append(f"| `{cls.code}` | {cls.exit_status} | {cls.http_status} | {cls.summary} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - documentation helper
    print(errors_table(), end="")
