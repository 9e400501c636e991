"""The Directory Service operations AMS serves, each a translation onto ams.directory.

Every handler takes the validated request body and a :class:`Call` (who, from which
region) and returns the answer body with the model's member names. Business rules (the
5-snapshot limit, the 180-day rule, primary-region-only, AD Connector) live in the
services; their errors carry the AWS shape to answer with (``aws_type``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ams.api.aws_ds.pagination import Pager, page
from ams.api.aws_ds.protocol import AwsError, epoch
from ams.directory import directories, snapshots
from ams.errors import DirectoryNotFound, WeakPassword
from ams.instance import Instance

__all__ = ["HANDLERS", "READ_ONLY", "Call"]


@dataclass(frozen=True)
class Call:
    instance: Instance
    key_id: str
    secret: str  # binds NextToken values to the caller
    region: str

    @property
    def actor(self) -> str:
        return f"apikey:{self.key_id}"


Handler = Callable[[Call, dict[str, Any]], dict[str, Any]]

# Operations a reader key may call: AWS's read-only verbs.
READ_ONLY = frozenset({"DescribeDirectories", "DescribeRegions", "DescribeSnapshots", "GetSnapshotLimits"})


def _visible(directory: Any, region: str) -> bool:
    """A directory is seen from its primary region and from each region it is replicated to."""
    return region == directory.region or any(r.region == region for r in directory.regions)


def _directory_in_region(call: Call, directory_id: str) -> Any:
    directory = directories.get(call.instance, directory_id)
    if not _visible(directory, call.region):
        raise AwsError(
            "EntityDoesNotExistException",
            f"directory {directory_id} does not exist in {call.region}: "
            f"its primary region is {directory.region}, send the request there",
        )
    return directory


def _directory(d: Any) -> dict[str, Any]:
    primary = d.region
    additional = [r.region for r in d.regions if r.region != primary]
    return {
        "DirectoryId": d.id,
        "Name": d.dns_name,
        "ShortName": d.short_name,
        "Size": d.size,
        "Edition": d.edition if d.type == "MicrosoftAD" else None,
        "Description": d.description,
        "Stage": d.stage,
        "StageReason": d.stage_reason,
        "LaunchTime": epoch(d.launched_at),
        "StageLastUpdatedDateTime": epoch(d.stage_changed_at),
        "Type": d.type,
        "DesiredNumberOfDomainControllers": 2 if d.type == "MicrosoftAD" else None,
        "RegionsInfo": {"PrimaryRegion": primary, "AdditionalRegions": additional},
    }


def _snapshot(s: Any) -> dict[str, Any]:
    return {
        "DirectoryId": s.directory_id,
        "SnapshotId": s.id,
        "Type": s.type,
        "Name": s.name,
        "Status": s.status,
        "StartTime": epoch(s.start_time),
    }


def create_microsoft_ad(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    # Password is the admin's LDAP bind password (kept as an Argon2id hash). VpcSettings,
    # Tags and NetworkType are validated against the model but not kept: AMS hosts the
    # directory's entries, not domain controllers in a VPC.
    created = directories.create(
        call.instance,
        dns_name=body["Name"],
        short_name=body.get("ShortName"),
        type="MicrosoftAD",
        edition=body.get("Edition", "Enterprise"),  # AWS's default edition
        region=call.region,
        description=body.get("Description"),
        admin_password=body["Password"],
        actor=call.actor,
    )
    return {"DirectoryId": created.id}


def reset_user_password(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    # The one user AMS keeps a password for is the directory's admin (its LDAP bind).
    directory = _directory_in_region(call, body["DirectoryId"])
    if body["UserName"].lower() != "admin":
        raise AwsError(
            "UserDoesNotExistException",
            f"directory {directory.id} has no user {body['UserName']} in AMS: only Admin has a password here",
        )
    try:
        directories.set_admin_password(call.instance, directory.id, body["NewPassword"], actor=call.actor)
    except WeakPassword as exc:
        raise AwsError("InvalidPasswordException", exc.message) from None
    return {}


def connect_directory(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    created = directories.create(
        call.instance,
        dns_name=body["Name"],
        short_name=body.get("ShortName"),
        type="ADConnector",
        region=call.region,
        description=body.get("Description"),
        size=body["Size"],
        actor=call.actor,
    )
    return {"DirectoryId": created.id}


def delete_directory(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    _directory_in_region(call, body["DirectoryId"])
    deleted = directories.delete(call.instance, body["DirectoryId"], actor=call.actor)
    return {"DirectoryId": deleted.id}


def describe_directories(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    wanted = body.get("DirectoryIds") or None
    if wanted:
        found = [_directory_in_region(call, d) for d in dict.fromkeys(wanted)]
    else:
        found = [d for d in directories.list_directories(call.instance) if _visible(d, call.region)]
    pager = Pager(call.secret, "DescribeDirectories", {"ids": wanted, "region": call.region})
    chunk, token = page(found, limit=body.get("Limit"), token=body.get("NextToken"), pager=pager, id_of=_id)
    return {"DirectoryDescriptions": [_directory(d) for d in chunk], "NextToken": token}


def describe_regions(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    try:
        directory = _directory_in_region(call, body["DirectoryId"])
    except (DirectoryNotFound, AwsError) as exc:
        # This operation names the shape differently in the model.
        raise AwsError("DirectoryDoesNotExistException", getattr(exc, "message", str(exc))) from None
    if directory.type != "MicrosoftAD":
        raise AwsError(
            "UnsupportedOperationException",
            f"{directory.id} is an AD Connector: regions apply to MicrosoftAD directories only",
        )
    regions = [r for r in directory.regions if body.get("RegionName") in (None, r.region)]
    pager = Pager(call.secret, "DescribeRegions", {"id": directory.id, "name": body.get("RegionName")})
    chunk, token = page(
        regions, limit=None, token=body.get("NextToken"), pager=pager, id_of=lambda r: str(r.region)
    )
    return {
        "RegionsDescription": [
            {
                "DirectoryId": directory.id,
                "RegionName": r.region,
                "RegionType": r.type,
                "Status": r.status,
                "DesiredNumberOfDomainControllers": 2,
                "LaunchTime": epoch(r.launched_at),
                "StatusLastUpdatedDateTime": epoch(r.last_updated_at),
                "LastUpdatedDateTime": epoch(r.last_updated_at),
            }
            for r in chunk
        ],
        "NextToken": token,
    }


def create_snapshot(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    snapshot = snapshots.create(
        call.instance, body["DirectoryId"], name=body.get("Name"), region=call.region, actor=call.actor
    )
    return {"SnapshotId": snapshot.id}


def delete_snapshot(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    deleted = snapshots.delete(call.instance, body["SnapshotId"], region=call.region, actor=call.actor)
    return {"SnapshotId": deleted.id}


def restore_from_snapshot(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    snapshots.restore(call.instance, body["SnapshotId"], region=call.region, actor=call.actor)
    return {}


def describe_snapshots(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    directory_id = body.get("DirectoryId")
    wanted = list(dict.fromkeys(body.get("SnapshotIds") or [])) or None
    if directory_id:
        _directory_in_region(call, directory_id)
    found = snapshots.list_snapshots(call.instance, directory_id, wanted)  # SnapshotNotFound
    visible = {d.id for d in directories.list_directories(call.instance) if _visible(d, call.region)}
    elsewhere = sorted(s.id for s in found if s.directory_id not in visible)
    if wanted and elsewhere:
        raise AwsError(
            "EntityDoesNotExistException",
            f"snapshot {elsewhere[0]} does not exist in {call.region}: "
            "send the request to its directory's primary region",
        )
    found = [s for s in found if s.directory_id in visible]
    pager = Pager(
        call.secret, "DescribeSnapshots", {"dir": directory_id, "ids": wanted, "region": call.region}
    )
    chunk, token = page(found, limit=body.get("Limit"), token=body.get("NextToken"), pager=pager, id_of=_id)
    return {"Snapshots": [_snapshot(s) for s in chunk], "NextToken": token}


def get_snapshot_limits(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    _directory_in_region(call, body["DirectoryId"])
    limits = snapshots.limits(call.instance, body["DirectoryId"])
    return {
        "SnapshotLimits": {
            "ManualSnapshotsLimit": limits.manual_limit,
            "ManualSnapshotsCurrentCount": limits.manual_count,
            "ManualSnapshotsLimitReached": limits.manual_limit_reached,
        }
    }


def _id(item: Any) -> str:
    return str(item.id)


HANDLERS: dict[str, Handler] = {
    "ConnectDirectory": connect_directory,
    "CreateMicrosoftAD": create_microsoft_ad,
    "CreateSnapshot": create_snapshot,
    "DeleteDirectory": delete_directory,
    "DeleteSnapshot": delete_snapshot,
    "DescribeDirectories": describe_directories,
    "DescribeRegions": describe_regions,
    "DescribeSnapshots": describe_snapshots,
    "GetSnapshotLimits": get_snapshot_limits,
    "ResetUserPassword": reset_user_password,
    "RestoreFromSnapshot": restore_from_snapshot,
}
