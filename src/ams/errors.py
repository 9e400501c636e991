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
    "DirectoryAttributeAbsent",
    "DirectoryEntryNotFound",
    "DirectoryNotFound",
    "DirectoryUnavailable",
    "DirectoryValueExists",
    "LdifInvalid",
    "NotPrimaryRegion",
    "SnapshotCorrupt",
    "SnapshotLimitExceeded",
    "SnapshotNotFound",
    "SnapshotStoreFailed",
    "SnapshotTooOld",
    "TooManyRequests",
    "UnsupportedOperation",
    "AMSError",
    "AgentNotRegistered",
    "AgentPasswordNotSet",
    "AgentServerAnswerInvalid",
    "AgentServerRefused",
    "AgentServerUnreachable",
    "AgentDirectoryFailed",
    "AgentStateNotPrivate",
    "AlreadyExists",
    "BackupFailed",
    "BackupInvalid",
    "BackupUnrecoverable",
    "BackupUnsafe",
    "BackupUnsupported",
    "AuthenticationRequired",
    "BadInput",
    "CertificateKeyAbsent",
    "CertificateKeyUnsupported",
    "Conflict",
    "DatabaseUnreadable",
    "DecryptionFailed",
    "DeviceDisabled",
    "DeviceWriteNotAllowed",
    "DirectoryBindingInvalid",
    "DevicePendingApproval",
    "DeviceTokenInvalid",
    "InstanceExists",
    "InstanceNotFound",
    "InternalError",
    "MasterKeyLocked",
    "MethodNotAllowed",
    "NotFound",
    "NotWritable",
    "PasswordUndecryptable",
    "PasswordVersionOutOfRange",
    "PasswordVersionsExhausted",
    "PermissionDenied",
    "PfxInvalid",
    "PfxKeyMismatch",
    "PfxNoPrivateKey",
    "RecoveryPasswordRequired",
    "RegistrationKeyInvalid",
    "RegistrationKeyRefused",
    "RequestTooLarge",
    "RestoreFailed",
    "RollbackWindowClosed",
    "SchemaMismatch",
    "ServiceRunning",
    "ServiceWorkersFailing",
    "WeakPassword",
    "WrongPassword",
    "OffsiteAccessDenied",
    "OffsiteBucketMissing",
    "OffsiteCopyFailed",
    "OffsiteCredentialsMissing",
    "OffsiteLockUnavailable",
    "OffsiteObjectInvalid",
    "OffsiteObjectNotFound",
    "OffsiteTargetNotFound",
    "OffsiteUnreachable",
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


# 16-19: directory entries changed over LDAP.


class DirectoryAttributeAbsent(BadInput):
    """An LDAP modify deletes a value or an attribute the entry does not have (noSuchAttribute)."""

    code = "directory_attribute_absent"
    exit_status = 16
    http_status = 422
    summary = "the entry has no such attribute or value to delete; nothing was changed"


class DirectoryValueExists(Conflict):
    """An LDAP modify adds a value the attribute has already (attributeOrValueExists)."""

    code = "directory_value_exists"
    exit_status = 17
    http_status = 409
    summary = "the attribute already has that value; nothing was changed"


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


class ServiceWorkersFailing(AMSError):
    code = "service_workers_failing"
    exit_status = 34
    http_status = 500
    summary = (
        "the worker processes of `ams serve` (or its LDAP process) kept ending, so the service "
        "stopped: see its log"
    )


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


class RequestTooLarge(AMSError):
    code = "request_too_large"
    exit_status = 42
    http_status = 413
    summary = "the request is larger than this route takes (docs/operations.md lists the limits): send less"


class MethodNotAllowed(AMSError):
    code = "method_not_allowed"
    exit_status = 43
    http_status = 405
    summary = "this path does not take that HTTP method: the Allow header lists the ones it takes"


# 44-45: password versions of a device (the agent protocol's integer range).


class PasswordVersionOutOfRange(BadInput):
    code = "password_version_out_of_range"
    exit_status = 44
    http_status = 422
    summary = (
        "the password version is outside what this device may report: report the next_version "
        "that GET /api/v1/agent/password advises"
    )


class PasswordVersionsExhausted(Conflict):
    code = "password_versions_exhausted"
    exit_status = 45
    http_status = 409
    summary = (
        "this device has used every password version the protocol carries: disable it "
        "(`ams device disable`) and register the device again (`ams-agent register`)"
    )


class TooManyRequests(AMSError):
    """Failed authentication throttled (ams.security.throttle): 429 with ``Retry-After``."""

    code = "too_many_requests"
    exit_status = 46
    http_status = 429
    summary = (
        "too many failed authentications from this address or for this key: "
        "wait the seconds Retry-After gives, then try again with a valid credential"
    )

    def __init__(self, message: str | None = None, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)


# 50-54: password encryption certificates and PFX files.


class PfxInvalid(BadInput):
    code = "pfx_invalid"
    exit_status = 50
    http_status = 422
    summary = "the file is not a PKCS#12 (PFX) file: export the certificate with its private key as .pfx/.p12"


class PfxNoPrivateKey(BadInput):
    code = "pfx_no_private_key"
    exit_status = 51
    http_status = 422
    summary = "the PFX file holds no private key: export the certificate again with its private key"


class PfxKeyMismatch(BadInput):
    code = "pfx_key_mismatch"
    exit_status = 52
    http_status = 422
    summary = "the private key in the PFX file does not belong to its certificate: export the right pair"


class CertificateKeyUnsupported(BadInput):
    code = "certificate_key_unsupported"
    exit_status = 53
    http_status = 422
    summary = "the certificate's key is not RSA of at least 2048 bits: use an RSA-2048 or larger key"


class CertificateKeyAbsent(Conflict):
    code = "certificate_key_absent"
    exit_status = 54
    http_status = 409
    summary = "this certificate's private key is not in AMS (lost): import its PFX with `ams certs import`"


# 55-64: devices and their passwords (the vault).


class PasswordUndecryptable(AMSError):
    code = "password_undecryptable"
    exit_status = 55
    http_status = 422
    # The agent API contract fixes this exact message.
    summary = "could not decrypt the password data provided by the client"


class DevicePendingApproval(PermissionDenied):
    code = "device_pending_approval"
    exit_status = 56
    http_status = 403
    summary = "this device waits for approval: an administrator runs `ams device approve DEVICE`"


class RollbackWindowClosed(Conflict):
    code = "rollback_window_closed"
    exit_status = 57
    http_status = 409
    summary = "the 60-second rollback window of this password update has closed; the new password stays"


class RegistrationKeyInvalid(AuthenticationRequired):
    code = "registration_key_invalid"
    exit_status = 58
    http_status = 401
    summary = "the registration key is unknown or wrong: ask an administrator for one (`ams regkey create`)"


class RegistrationKeyRefused(PermissionDenied):
    code = "registration_key_refused"
    exit_status = 59
    http_status = 403
    summary = "the registration key is disabled or used up: ask an administrator for another one"


class DeviceTokenInvalid(AuthenticationRequired):
    code = "device_token_invalid"
    exit_status = 60
    http_status = 401
    summary = "the device token is unknown or wrong: register the device again with `ams-agent register`"


class DeviceDisabled(PermissionDenied):
    code = "device_disabled"
    exit_status = 61
    http_status = 403
    summary = "this device is disabled: register it again, or ask an administrator"


# 26-29: devices whose password is stored in a directory (legacy agents, ams.vault.legacy).


class DeviceWriteNotAllowed(PermissionDenied):
    code = "device_write_not_allowed"
    exit_status = 26
    http_status = 403
    summary = (
        "a device may write only msLAPS-EncryptedPassword and msLAPS-PasswordExpirationTime of its own "
        "computer object; nothing was changed"
    )


class DirectoryBindingInvalid(BadInput):
    code = "directory_binding_invalid"
    exit_status = 27
    http_status = 422
    summary = (
        "a device can be bound only to an existing entry of a directory in its own scope, one device "
        "per entry: create the computer object first, or choose another DN"
    )


class AgentDirectoryFailed(AMSError):
    code = "agent_directory_failed"
    exit_status = 28
    http_status = 502
    summary = (
        "ams-agent could not read or write its computer object over LDAP: check --ldap-url, the "
        "device's binding and the network; the device keeps its password"
    )


# 65-74: directories and their snapshots. ``aws_type`` names the AWS Directory Service error
# shape the AWS-compatible API answers with.


class DirectoryNotFound(NotFound):
    code = "directory_not_found"
    exit_status = 65
    http_status = 404
    summary = "no such directory: list them with `ams directory list`"
    aws_type: ClassVar[str] = "EntityDoesNotExistException"


class SnapshotNotFound(NotFound):
    code = "snapshot_not_found"
    exit_status = 66
    http_status = 404
    summary = "no such snapshot: list them with `ams snapshot list`"
    aws_type: ClassVar[str] = "EntityDoesNotExistException"


class SnapshotLimitExceeded(Conflict):
    code = "snapshot_limit_exceeded"
    exit_status = 67
    http_status = 409
    summary = "the directory has 5 manual snapshots, the limit: delete one with `ams snapshot delete S` first"
    aws_type: ClassVar[str] = "SnapshotLimitExceededException"

    def __init__(
        self, message: str | None = None, *, directory_id: str | None = None, limit: int = 5
    ) -> None:
        super().__init__(message)
        # For interfaces that word the message their own way (the AWS-compatible API).
        self.directory_id = directory_id
        self.limit = limit


class DirectoryUnavailable(AMSError):
    code = "directory_unavailable"
    exit_status = 68
    http_status = 503
    summary = "the directory is restoring and offline: try again when its stage is Active"
    aws_type: ClassVar[str] = "ClientException"
    # The REST answer's Retry-After (seconds): a restore of thousands of entries takes seconds.
    retry_after: ClassVar[int] = 2


class UnsupportedOperation(Conflict):
    code = "unsupported_operation"
    exit_status = 69
    http_status = 409
    summary = "this directory does not support that operation (AD Connector directories have no snapshots)"
    aws_type: ClassVar[str] = "UnsupportedOperationException"


class SnapshotTooOld(UnsupportedOperation):
    code = "snapshot_too_old"
    exit_status = 70
    http_status = 422
    summary = "the snapshot is older than 180 days and cannot be restored: choose a newer snapshot"
    aws_type: ClassVar[str] = "ClientException"


class NotPrimaryRegion(UnsupportedOperation):
    code = "not_primary_region"
    exit_status = 71
    http_status = 409
    summary = "snapshot operations are accepted only in the directory's primary region: send them there"
    aws_type: ClassVar[str] = "ClientException"


class SnapshotCorrupt(AMSError):
    code = "snapshot_corrupt"
    exit_status = 72
    http_status = 422
    summary = "the snapshot file fails its checksum and cannot be restored: delete it, use another one"
    aws_type: ClassVar[str] = "ClientException"


class LdifInvalid(BadInput):
    code = "ldif_invalid"
    exit_status = 73
    http_status = 422
    summary = "the LDIF is not valid: fix the line the message names; nothing was imported"
    aws_type: ClassVar[str] = "InvalidParameterException"


class DirectoryEntryNotFound(NotFound):
    code = "directory_entry_not_found"
    exit_status = 74
    http_status = 404
    summary = "the directory has no entry with that DN: list entries with GET .../objects"
    aws_type: ClassVar[str] = "EntityDoesNotExistException"

    def __init__(self, message: str | None = None, *, matched_dn: str = "") -> None:
        super().__init__(message)
        # The nearest existing entry above the DN asked for (LDAP's matchedDN).
        self.matched_dn = matched_dn


# 80-89: backups and restore.


class BackupInvalid(AMSError):
    code = "backup_invalid"
    exit_status = 80
    http_status = 422
    summary = "the backup archive is damaged, altered or not an AMS backup; use another backup"


class BackupUnsafe(BackupInvalid):
    code = "backup_unsafe"
    exit_status = 81
    http_status = 422
    summary = "the backup archive holds a path that would write outside its folder; it was refused"


class BackupFailed(AMSError):
    code = "backup_failed"
    exit_status = 82
    http_status = 500
    summary = "the backup could not be written; check the destination, nothing was left behind"


class RestoreFailed(AMSError):
    code = "restore_failed"
    exit_status = 83
    http_status = 500
    summary = "the restore failed and the instance was left exactly as it was"


class BackupUnsupported(AMSError):
    code = "backup_unsupported"
    exit_status = 84
    http_status = 422
    summary = "this backup or database engine is not supported by this version of AMS"


class RecoveryPasswordRequired(AMSError):
    code = "recovery_password_required"
    exit_status = 85
    http_status = 403
    summary = "this backup needs the recovery password that was current when it was made"


class BackupUnrecoverable(AMSError):
    """The restore drill (``backup verify --deep``) found passwords the backup cannot decrypt.

    The archive itself is whole; ``report`` is the verification report, drill included.
    """

    code = "backup_unrecoverable"
    exit_status = 88
    http_status = 422
    summary = (
        "the restore drill found passwords this backup cannot decrypt (a certificate's private key is "
        "lost): import its PFX and back up again, or accept them with --allow-unrecoverable"
    )

    def __init__(self, message: str | None = None, report: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.report = report or {}


class SnapshotStoreFailed(AMSError):
    """Issue 13: the snapshot store is full or cannot be written (86, from the backups' range)."""

    code = "snapshot_store_failed"
    exit_status = 86
    http_status = 507
    summary = "the snapshot file could not be written (a full or read-only disk): free space, take it again"
    aws_type: ClassVar[str] = "ServiceException"


# 75 and 90-94: ams-agent, on the managed device (these never travel over HTTP).


class AgentStateNotPrivate(AMSError):
    code = "agent_state_not_private"
    exit_status = 75
    http_status = 500
    summary = (
        "the agent's state folder is open to other users, and the state file holds the device token: "
        "make the folder 0700 (chmod 700 FOLDER) or keep --state in a private folder"
    )


class AgentNotRegistered(AMSError):
    code = "agent_not_registered"
    exit_status = 90
    http_status = 500
    summary = "this agent is not registered: run `ams-agent register` first"


class AgentServerUnreachable(AMSError):
    code = "agent_server_unreachable"
    exit_status = 91
    http_status = 502
    summary = "the AMS server could not be reached: check the server address and the network, then try again"


class AgentServerRefused(AMSError):
    code = "agent_server_refused"
    exit_status = 92
    http_status = 502
    summary = "the AMS server refused the request; its message says why"


class AgentPasswordNotSet(AMSError):
    code = "agent_password_not_set"
    exit_status = 93
    http_status = 500
    summary = "the new password could not be set on this device; the device keeps its old password"


class AgentServerAnswerInvalid(AMSError):
    code = "agent_server_answer_invalid"
    exit_status = 94
    http_status = 502
    summary = "the AMS server's answer is not valid for this agent; nothing was changed"


# 47-49, 62-64, 77-79: offsite copies of backups on S3-compatible object storage.


class OffsiteTargetNotFound(NotFound):
    code = "offsite_target_not_found"
    exit_status = 47
    http_status = 404
    summary = "no offsite target of that name: list them with `ams backup target list`"


class OffsiteAccessDenied(AMSError):
    code = "offsite_access_denied"
    exit_status = 48
    http_status = 502
    summary = (
        "the object storage refused the credentials or a permission: check the access key and its "
        "policy (`ams backup target test NAME` names the permission)"
    )


class OffsiteBucketMissing(AMSError):
    code = "offsite_bucket_missing"
    exit_status = 49
    http_status = 502
    summary = "the target's bucket does not exist: create it, or correct the target's s3:// URL"


class OffsiteUnreachable(AMSError):
    code = "offsite_unreachable"
    exit_status = 62
    http_status = 504
    summary = (
        "the object storage could not be reached or did not answer in time: check the endpoint "
        "and the network"
    )


class OffsiteObjectInvalid(BackupInvalid):
    code = "offsite_object_invalid"
    exit_status = 63
    http_status = 422
    summary = (
        "the object in the bucket is not the backup that was copied there (replaced, altered or cut "
        "short): use another copy"
    )


class OffsiteCopyFailed(AMSError):
    code = "offsite_copy_failed"
    exit_status = 64
    http_status = 502
    summary = "the copy to the object storage failed; the local backup is kept and the next run retries it"


class OffsiteLockUnavailable(Conflict):
    code = "offsite_lock_unavailable"
    exit_status = 77
    http_status = 409
    summary = (
        "a lock was asked for but the bucket has no Object Lock: create a bucket with Object Lock enabled, "
        "or drop --lock-days"
    )


class OffsiteCredentialsMissing(BadInput):
    code = "offsite_credentials_missing"
    exit_status = 78
    http_status = 422
    summary = (
        "no credentials for the object storage: give --access-key-id with the secret on standard input, "
        "or set up the AWS chain (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile, an instance role)"
    )


class OffsiteObjectNotFound(NotFound):
    code = "offsite_object_not_found"
    exit_status = 79
    http_status = 404
    summary = "the bucket holds no such object: list what it holds with `ams backup list --target NAME`"


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
