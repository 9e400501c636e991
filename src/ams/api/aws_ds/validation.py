"""Input validation against the AWS Directory Service model (2015-04-16).

``SHAPES`` holds the input shapes of the operations AMS serves, copied from the service
model botocore ships (types, required members, patterns, lengths, enums);
tests/api/test_aws_ds.py checks them against that model, so a drift is caught. A request
that breaks a rule is answered with InvalidParameterException naming the member, the way
AWS phrases it, without echoing values of sensitive members (passwords).
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from ams.api.aws_ds.protocol import AwsError

__all__ = ["OPERATIONS", "SHAPES", "validate"]

# operation -> its input shape
OPERATIONS: dict[str, str] = {
    "ConnectDirectory": "ConnectDirectoryRequest",
    "CreateMicrosoftAD": "CreateMicrosoftADRequest",
    "CreateSnapshot": "CreateSnapshotRequest",
    "DeleteDirectory": "DeleteDirectoryRequest",
    "DeleteSnapshot": "DeleteSnapshotRequest",
    "DescribeDirectories": "DescribeDirectoriesRequest",
    "DescribeRegions": "DescribeRegionsRequest",
    "DescribeSnapshots": "DescribeSnapshotsRequest",
    "GetSnapshotLimits": "GetSnapshotLimitsRequest",
    "ResetUserPassword": "ResetUserPasswordRequest",
    "RestoreFromSnapshot": "RestoreFromSnapshotRequest",
}

SHAPES: dict[str, dict[str, Any]] = {
    "ConnectDirectoryRequest": {
        "type": "structure",
        "required": ["Name", "Password", "Size", "ConnectSettings"],
        "members": {
            "Name": "DirectoryName",
            "ShortName": "DirectoryShortName",
            "Password": "ConnectPassword",
            "Description": "Description",
            "Size": "DirectorySize",
            "ConnectSettings": "DirectoryConnectSettings",
            "Tags": "Tags",
            "NetworkType": "NetworkType",
        },
    },
    "ConnectPassword": {"type": "string", "min": 1, "max": 128, "sensitive": True},
    "CreateMicrosoftADRequest": {
        "type": "structure",
        "required": ["Name", "Password", "VpcSettings"],
        "members": {
            "Name": "DirectoryName",
            "ShortName": "DirectoryShortName",
            "Password": "Password",
            "Description": "Description",
            "VpcSettings": "DirectoryVpcSettings",
            "Edition": "DirectoryEdition",
            "Tags": "Tags",
            "NetworkType": "NetworkType",
        },
    },
    "CreateSnapshotRequest": {
        "type": "structure",
        "required": ["DirectoryId"],
        "members": {"DirectoryId": "DirectoryId", "Name": "SnapshotName"},
    },
    "DeleteDirectoryRequest": {
        "type": "structure",
        "required": ["DirectoryId"],
        "members": {"DirectoryId": "DirectoryId"},
    },
    "DeleteSnapshotRequest": {
        "type": "structure",
        "required": ["SnapshotId"],
        "members": {"SnapshotId": "SnapshotId"},
    },
    "DescribeDirectoriesRequest": {
        "type": "structure",
        "members": {"DirectoryIds": "DirectoryIds", "NextToken": "NextToken", "Limit": "Limit"},
    },
    "DescribeRegionsRequest": {
        "type": "structure",
        "required": ["DirectoryId"],
        "members": {"DirectoryId": "DirectoryId", "RegionName": "RegionName", "NextToken": "NextToken"},
    },
    "DescribeSnapshotsRequest": {
        "type": "structure",
        "members": {
            "DirectoryId": "DirectoryId",
            "SnapshotIds": "SnapshotIds",
            "NextToken": "NextToken",
            "Limit": "Limit",
        },
    },
    "Description": {
        "type": "string",
        "pattern": "^([a-zA-Z0-9_])[\\\\a-zA-Z0-9_@#%*+=:?./!\\s-]*$",
        "min": 0,
        "max": 128,
    },
    "DirectoryConnectSettings": {
        "type": "structure",
        "required": ["VpcId", "SubnetIds", "CustomerUserName"],
        "members": {
            "VpcId": "VpcId",
            "SubnetIds": "SubnetIds",
            "CustomerDnsIps": "DnsIpAddrs",
            "CustomerDnsIpsV6": "DnsIpv6Addrs",
            "CustomerUserName": "UserName",
        },
    },
    "DirectoryEdition": {"type": "string", "enum": ["Enterprise", "Standard", "Hybrid"]},
    "DirectoryId": {"type": "string", "pattern": "^d-[0-9a-f]{10}$"},
    "DirectoryIds": {"type": "list", "member": "DirectoryId"},
    "DirectoryName": {"type": "string", "pattern": "^([a-zA-Z0-9]+[\\\\.-])+([a-zA-Z0-9])+$"},
    "DirectoryShortName": {"type": "string", "pattern": '^[^\\\\/:*?"<>|.]+[^\\\\/:*?"<>|]*$'},
    "DirectorySize": {"type": "string", "enum": ["Small", "Large"]},
    "DirectoryVpcSettings": {
        "type": "structure",
        "required": ["VpcId", "SubnetIds"],
        "members": {"VpcId": "VpcId", "SubnetIds": "SubnetIds"},
    },
    "DnsIpAddrs": {"type": "list", "member": "IpAddr"},
    "DnsIpv6Addrs": {"type": "list", "member": "Ipv6Addr"},
    "GetSnapshotLimitsRequest": {
        "type": "structure",
        "required": ["DirectoryId"],
        "members": {"DirectoryId": "DirectoryId"},
    },
    "IpAddr": {
        "type": "string",
        "pattern": "^(?:(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\\.){3}(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)$",  # noqa: E501
    },
    "Ipv6Addr": {
        "type": "string",
        "pattern": "^(([0-9a-fA-F]{1,4}:){7,7}[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,7}:|([0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,5}(:[0-9a-fA-F]{1,4}){1,2}|([0-9a-fA-F]{1,4}:){1,4}(:[0-9a-fA-F]{1,4}){1,3}|([0-9a-fA-F]{1,4}:){1,3}(:[0-9a-fA-F]{1,4}){1,4}|([0-9a-fA-F]{1,4}:){1,2}(:[0-9a-fA-F]{1,4}){1,5}|[0-9a-fA-F]{1,4}:((:[0-9a-fA-F]{1,4}){1,6})|:((:[0-9a-fA-F]{1,4}){1,7}|:)|fe80:(:[0-9a-fA-F]{0,4}){0,4}%[0-9a-zA-Z]{1,}|::(ffff(:0{1,4}){0,1}:){0,1}((25[0-5]|(2[0-4]|1{0,1}[0-9]){0,1}[0-9])\\.){3}(25[0-5]|(2[0-4]|1{0,1}[0-9]){0,1}[0-9])|([0-9a-fA-F]{1,4}:){1,4}:((25[0-5]|(2[0-4]|1{0,1}[0-9]){0,1}[0-9])\\.){3}(25[0-5]|(2[0-4]|1{0,1}[0-9]){0,1}[0-9]))$",  # noqa: E501
    },
    "Limit": {"type": "integer", "min": 0},
    "NetworkType": {"type": "string", "enum": ["Dual-stack", "IPv4", "IPv6"]},
    "NextToken": {"type": "string"},
    "Password": {
        "type": "string",
        "pattern": "(?=^.{8,64}$)((?=.*\\d)(?=.*[A-Z])(?=.*[a-z])|(?=.*\\d)(?=.*[^A-Za-z0-9\\s])(?=.*[a-z])|(?=.*[^A-Za-z0-9\\s])(?=.*[A-Z])(?=.*[a-z])|(?=.*\\d)(?=.*[A-Z])(?=.*[^A-Za-z0-9\\s]))^.*",  # noqa: E501
        "sensitive": True,
    },
    "RegionName": {"type": "string", "min": 8, "max": 32},
    "ResetUserPasswordRequest": {
        "type": "structure",
        "required": ["DirectoryId", "UserName", "NewPassword"],
        "members": {
            "DirectoryId": "DirectoryId",
            "UserName": "CustomerUserName",
            "NewPassword": "UserPassword",
        },
    },
    "CustomerUserName": {
        "type": "string",
        "pattern": '^(?!.*\\\\|.*"|.*\\/|.*\\[|.*\\]|.*:|.*;|.*\\||.*=|.*,|.*\\+|.*\\*|.*\\?|.*<|.*>|.*@).*$',
        "min": 1,
        "max": 64,
    },
    "UserPassword": {"type": "string", "min": 1, "max": 127, "sensitive": True},
    "RestoreFromSnapshotRequest": {
        "type": "structure",
        "required": ["SnapshotId"],
        "members": {"SnapshotId": "SnapshotId"},
    },
    "SnapshotId": {"type": "string", "pattern": "^s-[0-9a-f]{10}$"},
    "SnapshotIds": {"type": "list", "member": "SnapshotId"},
    "SnapshotName": {
        "type": "string",
        "pattern": "^([a-zA-Z0-9_])[\\\\a-zA-Z0-9_@#%*+=:?./!\\s-]*$",
        "min": 0,
        "max": 128,
    },
    "SubnetId": {"type": "string", "pattern": "^(subnet-[0-9a-f]{8}|subnet-[0-9a-f]{17})$"},
    "SubnetIds": {"type": "list", "member": "SubnetId"},
    "Tag": {
        "type": "structure",
        "required": ["Key", "Value"],
        "members": {"Key": "TagKey", "Value": "TagValue"},
    },
    "TagKey": {"type": "string", "pattern": "^([\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*)$", "min": 1, "max": 128},
    "TagValue": {"type": "string", "pattern": "^([\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*)$", "min": 0, "max": 256},
    "Tags": {"type": "list", "member": "Tag"},
    "UserName": {"type": "string", "pattern": "[a-zA-Z0-9._-]+", "min": 1},
    "VpcId": {"type": "string", "pattern": "^(vpc-[0-9a-f]{8}|vpc-[0-9a-f]{17})$"},
}

_PATTERN_INPUT_MAX = 1024

# Java's Unicode classes, which Python's re lacks: letters and numbers are word characters
# other than "_", separators are whitespace.
_JAVA_CLASSES = {r"[\p{L}\p{Z}\p{N}_.:/=+\-@]": r"(?:[^\W_]|\s|[_.:/=+\-@])"}


@cache
def _pattern(source: str) -> re.Pattern[str]:
    for java, python in _JAVA_CLASSES.items():
        source = source.replace(java, python)
    # "$" in Python also matches before a final newline; the model means the very end.
    if source.endswith("$") and not source.endswith("\\$"):
        source = source[:-1] + r"\Z"
    return re.compile(source)


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]


class _Errors:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, value: object, sensitive: bool, constraint: str) -> None:
        shown = "" if sensitive or isinstance(value, dict | list) else f" '{str(value)[:64]}'"
        self.items.append(f"Value{shown} at '{path}' failed to satisfy constraint: Member must {constraint}")


def _check(shape_name: str, value: object, path: str, errors: _Errors) -> None:
    shape = SHAPES[shape_name]
    kind = shape["type"]
    sensitive = bool(shape.get("sensitive"))
    if kind == "structure":
        if not isinstance(value, dict):
            errors.add(path or "request", value, sensitive, "be an object")
            return
        for name in shape.get("required", []):
            if value.get(name) is None:
                where = f"{path}.{_camel(name)}" if path else _camel(name)
                errors.add(where, None, True, "not be null")
        for name, member in shape["members"].items():
            if value.get(name) is not None:
                _check(member, value[name], f"{path}.{_camel(name)}" if path else _camel(name), errors)
        return
    if kind == "list":
        if not isinstance(value, list):
            errors.add(path, value, sensitive, "be a list")
            return
        for i, item in enumerate(value):
            _check(shape["member"], item, f"{path}.{i + 1}.member", errors)
        return
    if kind == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            errors.add(path, value, sensitive, "be an integer")
        elif "min" in shape and value < shape["min"]:
            errors.add(path, value, sensitive, f"have value greater than or equal to {shape['min']}")
        return
    if kind == "boolean":
        if not isinstance(value, bool):
            errors.add(path, value, sensitive, "be a boolean")
        return
    if not isinstance(value, str):
        errors.add(path, value, sensitive, "be a string")
        return
    if "min" in shape and len(value) < shape["min"]:
        errors.add(path, value, sensitive, f"have length greater than or equal to {shape['min']}")
    elif "max" in shape and len(value) > shape["max"]:
        errors.add(path, value, sensitive, f"have length less than or equal to {shape['max']}")
    elif "enum" in shape and value not in shape["enum"]:
        errors.add(path, value, sensitive, f"satisfy enum value set: [{', '.join(shape['enum'])}]")
    elif "pattern" in shape and len(value) > _PATTERN_INPUT_MAX:
        # Refused before matching, so no pattern ever backtracks over a huge input.
        errors.add(path, value, sensitive, f"have length less than or equal to {_PATTERN_INPUT_MAX}")
    elif "pattern" in shape and not _pattern(shape["pattern"]).search(value):
        errors.add(path, value, sensitive, f"satisfy regular expression pattern: {shape['pattern']}")


def validate(operation: str, body: object) -> dict[str, Any]:
    """Return the request body when it satisfies the model; else raise InvalidParameterException."""
    errors = _Errors()
    _check(OPERATIONS[operation], body, "", errors)
    if errors.items:
        count = len(errors.items)
        noun = "error" if count == 1 else "errors"
        raise AwsError(
            "InvalidParameterException",
            f"{count} validation {noun} detected: " + "; ".join(errors.items[:5]),
        )
    assert isinstance(body, dict)
    return body
