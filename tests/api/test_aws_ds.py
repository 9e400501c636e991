"""The real boto3 `ds` client against a real `ams serve`, plus the model checks in-process."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import botocore.auth
import httpx
import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from ams import apikeys, errors
from ams.api.aws_ds.pagination import Pager, page
from ams.api.aws_ds.protocol import AwsError, aws_error_from
from ams.api.aws_ds.validation import OPERATIONS, SHAPES, validate
from ams.apikeys import Role
from ams.clock import SystemClock
from ams.directory import directories
from ams.home import Home
from ams.instance import open_instance
from conftest import RECOVERY_PASSWORD, run_ams
from server import Server

VPC = {"VpcId": "vpc-0123456789abcdef0", "SubnetIds": ["subnet-01234567", "subnet-89abcdef"]}
DIRECTORY_PASSWORD = "Quartz-Meadow-81!"


# --- the model, in-process ---------------------------------------------------------------


def _botocore_model() -> dict[str, Any]:
    data = Path(botocore.__file__).parent / "data" / "ds"
    (path,) = sorted(data.glob("*/service-2.json.gz"))[-1:]
    model: dict[str, Any] = json.loads(gzip.decompress(path.read_bytes()))
    return model


def test_shapes_equal_the_service_model() -> None:
    model = _botocore_model()
    assert model["metadata"]["targetPrefix"] == "DirectoryService_20150416"
    for operation, shape in OPERATIONS.items():
        assert model["operations"][operation]["input"]["shape"] == shape
    for name, ours in SHAPES.items():
        theirs = model["shapes"][name]
        for key in ("type", "required", "pattern", "min", "max", "enum"):
            assert ours.get(key) == theirs.get(key), (name, key)
        if "members" in theirs:
            assert ours["members"] == {k: v["shape"] for k, v in theirs["members"].items()}, name
        if "member" in theirs:
            assert ours["member"] == theirs["member"]["shape"], name


@pytest.mark.parametrize(
    ("operation", "body", "fragment"),
    [
        ("CreateSnapshot", {}, "'directoryId' failed to satisfy constraint: Member must not be null"),
        ("CreateSnapshot", {"DirectoryId": "d-01234"}, "regular expression pattern: ^d-[0-9a-f]{10}$"),
        ("CreateSnapshot", {"DirectoryId": "d-0123456789\n"}, "regular expression pattern"),
        ("CreateSnapshot", {"DirectoryId": "d-0123456789", "Name": "x" * 129}, "length less than or equal"),
        ("DeleteSnapshot", {"SnapshotId": "s-XYZ"}, "^s-[0-9a-f]{10}$"),
        ("DescribeSnapshots", {"Limit": -1}, "greater than or equal to 0"),
        ("DescribeSnapshots", {"Limit": "2"}, "be an integer"),
        ("DescribeSnapshots", {"SnapshotIds": ["s-0123456789", "nope"]}, "'snapshotIds.2.member'"),
        ("DescribeDirectories", {"DirectoryIds": "d-0123456789"}, "be a list"),
        ("CreateMicrosoftAD", {"Name": "corp.example.com", "VpcSettings": VPC}, "'password'"),
        ("CreateMicrosoftAD", {"Name": "corp", "Password": DIRECTORY_PASSWORD, "VpcSettings": VPC}, "'name'"),
        ("CreateMicrosoftAD", {"Name": "a.b", "Password": "x", "VpcSettings": VPC}, "'password'"),
        ("CreateMicrosoftAD", {"Name": "a.b", "Password": DIRECTORY_PASSWORD, "VpcSettings": {}}, "vpcId"),
        (
            "CreateMicrosoftAD",
            {"Name": "a.b", "Password": DIRECTORY_PASSWORD, "VpcSettings": VPC, "Edition": "Gold"},
            "enum value set: [Enterprise, Standard, Hybrid]",
        ),
        ("ConnectDirectory", {"Name": "a.b", "Password": "p", "Size": "Small"}, "'connectSettings'"),
        ("DescribeRegions", {"DirectoryId": "d-0123456789", "RegionName": "x"}, "'regionName'"),
        ("GetSnapshotLimits", [], "be an object"),
    ],
)
def test_validation_answers_invalid_parameter(operation: str, body: Any, fragment: str) -> None:
    with pytest.raises(AwsError) as info:
        validate(operation, body)
    assert info.value.aws_type == "InvalidParameterException"
    assert info.value.status == 400
    assert fragment in info.value.message


def test_validation_never_echoes_a_password() -> None:
    with pytest.raises(AwsError) as info:
        validate("CreateMicrosoftAD", {"Name": "a.b", "Password": "weakpassword", "VpcSettings": VPC})
    assert "weakpassword" not in info.value.message


def test_valid_inputs_pass() -> None:
    body = {
        "Name": "corp.example.com",
        "ShortName": "CORP",
        "Password": DIRECTORY_PASSWORD,
        "VpcSettings": VPC,
        "Edition": "Standard",
        "Tags": [{"Key": "Ümlaut team:1", "Value": ""}],
    }
    assert validate("CreateMicrosoftAD", body) is body
    assert validate("DescribeSnapshots", {}) == {}


def test_next_tokens_are_tamper_evident() -> None:
    items = [f"s-{i:010x}" for i in range(5)]
    pager = Pager("secret-a", "DescribeSnapshots", {"dir": "d-0123456789"})
    first, token = page(items, limit=2, token=None, pager=pager, id_of=str)
    assert first == items[:2] and token
    second, token2 = page(items, limit=2, token=token, pager=pager, id_of=str)
    assert second == items[2:4]
    # A deleted item between pages neither repeats nor skips the rest.
    shrunk = [items[0], items[1], items[3], items[4]]
    assert page(shrunk, limit=2, token=token, pager=pager, id_of=str)[0] == [items[3], items[4]]
    last, none = page(items, limit=2, token=token2, pager=pager, id_of=str)
    assert last == items[4:] and none is None
    payload, _, mac = token.partition(".")
    for bad in (
        token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
        payload.replace(payload[3], "Z" if payload[3] != "Z" else "Y", 1) + "." + mac,
        "garbage",
        "",
        "x" * 5000,
    ):
        with pytest.raises(AwsError) as info:
            page(items, limit=2, token=bad, pager=pager, id_of=str)
        assert info.value.aws_type == "InvalidNextTokenException"
    for other in (
        Pager("secret-b", "DescribeSnapshots", {"dir": "d-0123456789"}),  # another key
        Pager("secret-a", "DescribeSnapshots", {"dir": "d-abcdefabcd"}),  # another query
        Pager("secret-a", "DescribeDirectories", {"dir": "d-0123456789"}),  # another operation
    ):
        with pytest.raises(AwsError):
            page(items, limit=2, token=token, pager=other, id_of=str)


@pytest.mark.parametrize(
    ("error", "aws_type", "status"),
    [
        (errors.SnapshotLimitExceeded(), "SnapshotLimitExceededException", 400),
        (errors.SnapshotNotFound(), "EntityDoesNotExistException", 400),
        (errors.DirectoryUnavailable(), "ClientException", 400),
        (errors.SnapshotTooOld(), "ClientException", 400),
        (errors.NotPrimaryRegion(), "ClientException", 400),
        (errors.UnsupportedOperation(), "UnsupportedOperationException", 400),
        (errors.BadInput(), "InvalidParameterException", 400),
        (errors.NotFound(), "EntityDoesNotExistException", 400),
        (errors.AlreadyExists(), "ClientException", 400),
        (errors.Conflict(), "ClientException", 400),
        (errors.PermissionDenied(), "AccessDeniedException", 400),
        (errors.MasterKeyLocked(), "ServiceException", 500),
        (errors.InternalError(), "ServiceException", 500),
    ],
)
def test_ams_errors_map_to_model_shapes(error: errors.AMSError, aws_type: str, status: int) -> None:
    mapped = aws_error_from(error)
    assert (mapped.aws_type, mapped.status) == (aws_type, status)
    if isinstance(error, errors.SnapshotLimitExceeded):
        # Worded for this API: AWS operations, not `ams` commands.
        assert "DeleteSnapshot" in mapped.message and "ams " not in mapped.message
    else:
        assert mapped.message == error.message


# --- the real client against a real server -------------------------------------------------


class Env:
    def __init__(
        self,
        server: Server,
        admin: dict[str, str],
        reader: dict[str, str],
        revoked: dict[str, str],
        multi_region_id: str,
    ) -> None:
        self.server = server
        self.admin = admin
        self.reader = reader
        self.revoked = revoked
        self.multi_region_id = multi_region_id

    def ds(
        self,
        region: str = "us-east-1",
        key: dict[str, str] | None = None,
        *,
        secret: str | None = None,
        path: str = "/aws/ds",
    ) -> Any:
        key = key or self.admin
        return boto3.client(
            "ds",
            endpoint_url=self.server.url + path,
            region_name=region,
            aws_access_key_id=key["id"],
            aws_secret_access_key=secret or key["secret"],
            config=Config(retries={"max_attempts": 1}),
        )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    home = tmp_path_factory.mktemp("aws-ds") / "home"
    init = run_ams("init", "--recovery-password-stdin", home=home, input=RECOVERY_PASSWORD + "\n")
    assert init.returncode == 0, init.stderr
    created = run_ams("apikey", "create", "--name", "boto3", "--role", "admin", "--json", home=home)
    assert created.returncode == 0, created.stderr
    admin = json.loads(created.stdout)
    # What no AWS operation here makes: a reader key, a revoked key, a directory with a replica.
    instance = open_instance(Home(home), SystemClock())
    try:
        reader = apikeys.create(instance, "reader", Role.READER, actor="test")
        revoked = apikeys.create(instance, "gone", Role.ADMIN, actor="test")
        apikeys.revoke(instance, revoked.info.id, actor="test")
        multi = directories.create(
            instance,
            dns_name="global.example.com",
            short_name="GLOBAL",
            edition="Enterprise",
            region="us-east-1",
            additional_regions=["eu-west-1"],
            actor="test",
        )
    finally:
        instance.close()
    env = Env(
        Server(home),
        admin,
        {"id": reader.info.id, "secret": reader.secret},
        {"id": revoked.info.id, "secret": revoked.secret},
        multi.id,
    )
    try:
        yield env
    finally:
        env.server.stop()  # tests near the end replace the server; stop whichever runs
    logs = sorted(home.parent.glob("serve-*.log"))
    assert logs
    for log in logs:
        text = log.read_text()
        for secret in (admin["secret"], reader.secret, DIRECTORY_PASSWORD):
            assert secret not in text


def _error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, str, int]:
    response = exc.value.response
    assert response["ResponseMetadata"]["HTTPHeaders"].get("x-amzn-requestid")
    return (
        response["Error"]["Code"],
        response["Error"]["Message"],
        response["ResponseMetadata"]["HTTPStatusCode"],
    )


def _create_directory(ds: Any, name: str) -> str:
    answer = ds.create_microsoft_ad(
        Name=name, Password=DIRECTORY_PASSWORD, VpcSettings=VPC, Edition="Standard"
    )
    assert answer["ResponseMetadata"]["HTTPHeaders"]["content-type"] == "application/x-amz-json-1.1"
    directory_id: str = answer["DirectoryId"]
    assert directory_id.startswith("d-") and len(directory_id) == 12
    return directory_id


def _stage(ds: Any, directory_id: str) -> str:
    (description,) = ds.describe_directories(DirectoryIds=[directory_id])["DirectoryDescriptions"]
    stage: str = description["Stage"]
    return stage


def test_create_keeps_the_admin_password_and_reset_user_password_replaces_it(env: Env) -> None:
    ds = env.ds()
    directory_id = _create_directory(ds, "ldapadmin.example.com")
    instance = open_instance(Home(env.server.home), SystemClock())
    try:
        # CreateMicrosoftAD's Password is the admin's LDAP bind password, kept as a hash.
        assert directories.verify_admin_password(instance, directory_id, DIRECTORY_PASSWORD)
        ds.reset_user_password(DirectoryId=directory_id, UserName="admin", NewPassword="Quartz-Meadow-82!")
        assert directories.verify_admin_password(instance, directory_id, "Quartz-Meadow-82!")
        assert not directories.verify_admin_password(instance, directory_id, DIRECTORY_PASSWORD)
    finally:
        instance.close()
    with pytest.raises(ClientError) as other:
        ds.reset_user_password(DirectoryId=directory_id, UserName="alice", NewPassword="Quartz-Meadow-83!")
    assert other.value.response["Error"]["Code"] == "UserDoesNotExistException"
    with pytest.raises(ClientError) as weak:
        ds.reset_user_password(DirectoryId=directory_id, UserName="Admin", NewPassword="alllowercase")
    assert weak.value.response["Error"]["Code"] == "InvalidPasswordException"
    assert "alllowercase" not in weak.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as reader:
        env.ds(key=env.reader).reset_user_password(
            DirectoryId=directory_id, UserName="Admin", NewPassword="Quartz-Meadow-84!"
        )
    assert reader.value.response["Error"]["Code"] == "AccessDeniedException"


def test_snapshot_lifecycle_with_boto3(env: Env) -> None:
    ds = env.ds()
    directory_id = _create_directory(ds, "corp.example.com")
    (description,) = ds.describe_directories(DirectoryIds=[directory_id])["DirectoryDescriptions"]
    assert description["Name"] == "corp.example.com"
    assert description["ShortName"] == "CORP"
    assert description["Type"] == "MicrosoftAD"
    assert description["Edition"] == "Standard"
    assert description["Stage"] == "Active"
    assert description["RegionsInfo"] == {"PrimaryRegion": "us-east-1", "AdditionalRegions": []}
    assert abs(description["LaunchTime"].timestamp() - time.time()) < 120

    made = [
        ds.create_snapshot(DirectoryId=directory_id, Name=f"before-change-{i}")["SnapshotId"]
        for i in range(5)
    ]
    assert len(set(made)) == 5
    limits = ds.get_snapshot_limits(DirectoryId=directory_id)["SnapshotLimits"]
    assert limits == {
        "ManualSnapshotsLimit": 5,
        "ManualSnapshotsCurrentCount": 5,
        "ManualSnapshotsLimitReached": True,
    }
    with pytest.raises(ClientError) as sixth:
        ds.create_snapshot(DirectoryId=directory_id)
    code, message, status = _error(sixth)
    assert (code, status) == ("SnapshotLimitExceededException", 400)
    assert "5" in message and directory_id in message
    # In the API's own terms: the caller speaks AWS, not `ams`.
    assert "DeleteSnapshot" in message and "ams " not in message
    assert sixth.value.__class__.__name__ == "SnapshotLimitExceededException"

    # Limit=2 pages through all five: 2, 2, 1.
    seen: list[str] = []
    pages = 0
    request: dict[str, Any] = {"DirectoryId": directory_id, "Limit": 2}
    while True:
        answer = ds.describe_snapshots(**request)
        pages += 1
        assert len(answer["Snapshots"]) <= 2
        for snapshot in answer["Snapshots"]:
            assert snapshot["DirectoryId"] == directory_id
            assert snapshot["Type"] == "Manual"
            assert snapshot["Status"] in ("Creating", "Completed")
            assert snapshot["Name"].startswith("before-change-")
            seen.append(snapshot["SnapshotId"])
        if "NextToken" not in answer:
            break
        request["NextToken"] = answer["NextToken"]
    assert pages == 3
    assert sorted(seen) == sorted(made)
    # The paginator boto3 ships agrees.
    paginated = ds.get_paginator("describe_snapshots").paginate(
        DirectoryId=directory_id, PaginationConfig={"PageSize": 2}
    )
    assert [s["SnapshotId"] for p in paginated for s in p["Snapshots"]] == seen

    with pytest.raises(ClientError) as tampered:
        ds.describe_snapshots(DirectoryId=directory_id, Limit=2, NextToken=request["NextToken"][:-3] + "AAA")
    assert _error(tampered)[0] == "InvalidNextTokenException"

    # Restore returns at once; poll until the directory is Active again.
    target = made[-1]
    for _ in range(100):
        snapshot = ds.describe_snapshots(SnapshotIds=[target])["Snapshots"][0]
        if snapshot["Status"] == "Completed":
            break
        time.sleep(0.1)
    assert ds.restore_from_snapshot(SnapshotId=target)["ResponseMetadata"]["HTTPStatusCode"] == 200
    stages = [_stage(ds, directory_id)]
    deadline = time.monotonic() + 30
    while stages[-1] != "Active" and time.monotonic() < deadline:
        time.sleep(0.1)
        stages.append(_stage(ds, directory_id))
    assert stages[-1] == "Active", stages
    assert set(stages) <= {"Restoring", "Active"}

    assert ds.delete_snapshot(SnapshotId=made[0])["SnapshotId"] == made[0]
    left = [s["SnapshotId"] for s in ds.describe_snapshots(DirectoryId=directory_id)["Snapshots"]]
    assert sorted(left) == sorted(made[1:])
    assert (
        ds.get_snapshot_limits(DirectoryId=directory_id)["SnapshotLimits"]["ManualSnapshotsLimitReached"]
        is False
    )
    with pytest.raises(ClientError) as gone:
        ds.delete_snapshot(SnapshotId=made[0])
    assert _error(gone)[:1] == ("EntityDoesNotExistException",)
    with pytest.raises(ClientError) as gone:
        ds.describe_snapshots(SnapshotIds=[made[0]])
    assert _error(gone)[0] == "EntityDoesNotExistException"


def test_directory_operations(env: Env) -> None:
    ds = env.ds()
    # The documented alternative endpoint: POST / with the target header.
    root = env.ds(path="")
    directory_id = _create_directory(root, "branch.example.com")
    connector = ds.connect_directory(
        Name="onprem.example.com",
        Password="connector-password",
        Size="Small",
        ConnectSettings={"VpcId": VPC["VpcId"], "SubnetIds": VPC["SubnetIds"], "CustomerUserName": "svc-ams"},
    )["DirectoryId"]
    listed = {d["DirectoryId"]: d for d in ds.describe_directories()["DirectoryDescriptions"]}
    assert {directory_id, connector, env.multi_region_id} <= set(listed)
    assert listed[connector]["Type"] == "ADConnector"
    assert listed[connector]["Size"] == "Small"
    assert "Edition" not in listed[connector]

    first = ds.describe_directories(Limit=1)
    assert len(first["DirectoryDescriptions"]) == 1 and first["NextToken"]
    rest = ds.describe_directories(Limit=100, NextToken=first["NextToken"])
    assert len(rest["DirectoryDescriptions"]) == len(listed) - 1

    # AD Connectors have no snapshots (UnsupportedOperationException, as docs/aws-compat.md says).
    with pytest.raises(ClientError) as refused:
        ds.create_snapshot(DirectoryId=connector)
    code, message, _ = _error(refused)
    assert code == "UnsupportedOperationException"
    assert "AD Connector" in message or "ADConnector" in message

    regions = ds.describe_regions(DirectoryId=env.multi_region_id)["RegionsDescription"]
    assert {(r["RegionName"], r["RegionType"]) for r in regions} == {
        ("us-east-1", "Primary"),
        ("eu-west-1", "Additional"),
    }
    assert all(r["Status"] == "Active" for r in regions)
    with pytest.raises(ClientError) as missing:
        ds.describe_regions(DirectoryId="d-0000000000")
    assert _error(missing)[0] == "DirectoryDoesNotExistException"

    with pytest.raises(ClientError) as taken:
        _create_directory(ds, "branch.example.com")
    code, message, _ = _error(taken)
    assert code == "ClientException" and "already exists" in message

    assert ds.delete_directory(DirectoryId=directory_id)["DirectoryId"] == directory_id
    with pytest.raises(ClientError) as gone:
        ds.describe_directories(DirectoryIds=[directory_id])
    assert _error(gone)[0] == "EntityDoesNotExistException"
    with pytest.raises(ClientError) as gone:
        ds.delete_directory(DirectoryId=directory_id)
    assert _error(gone)[0] == "EntityDoesNotExistException"


def test_a_request_signed_for_an_additional_region_is_refused(env: Env) -> None:
    replica = env.ds(region="eu-west-1")
    (seen,) = replica.describe_directories(DirectoryIds=[env.multi_region_id])["DirectoryDescriptions"]
    assert seen["RegionsInfo"] == {"PrimaryRegion": "us-east-1", "AdditionalRegions": ["eu-west-1"]}
    with pytest.raises(ClientError) as refused:
        replica.create_snapshot(DirectoryId=env.multi_region_id)
    code, message, status = _error(refused)
    assert (code, status) == ("ClientException", 400)
    assert "primary region" in message
    # Nothing was made, and the primary region accepts the same call.
    primary = env.ds(region="us-east-1")
    manual = primary.describe_snapshots(DirectoryId=env.multi_region_id)["Snapshots"]
    assert [s for s in manual if s["Type"] == "Manual"] == []  # `ams serve` may have taken an Auto one
    snapshot_id = primary.create_snapshot(DirectoryId=env.multi_region_id)["SnapshotId"]
    with pytest.raises(ClientError) as refused:
        replica.delete_snapshot(SnapshotId=snapshot_id)
    assert _error(refused)[0] == "ClientException"
    with pytest.raises(ClientError) as refused:
        replica.restore_from_snapshot(SnapshotId=snapshot_id)
    assert _error(refused)[0] == "ClientException"
    # A region the directory is not in does not see it at all.
    with pytest.raises(ClientError) as unseen:
        env.ds(region="ap-south-1").get_snapshot_limits(DirectoryId=env.multi_region_id)
    code, message, _ = _error(unseen)
    assert code == "EntityDoesNotExistException" and "us-east-1" in message


def test_invalid_parameters_reach_the_server(env: Env) -> None:
    # botocore checks types and lengths, not patterns: the server must.
    ds = env.ds()
    with pytest.raises(ClientError) as bad:
        ds.create_snapshot(DirectoryId="d-NOTHEX1234")
    code, message, status = _error(bad)
    assert (code, status) == ("InvalidParameterException", 400)
    assert "^d-[0-9a-f]{10}$" in message
    with pytest.raises(ClientError) as bad:
        ds.create_microsoft_ad(Name="corp.example.com", Password="weakpassword", VpcSettings=VPC)
    code, message, _ = _error(bad)
    assert code == "InvalidParameterException" and "weakpassword" not in message


def test_bad_signature_unknown_and_revoked_keys_are_refused(env: Env) -> None:
    with pytest.raises(ClientError) as bad:
        env.ds(secret="wrong-secret").describe_directories()
    code, message, status = _error(bad)
    assert (code, status) == ("InvalidSignatureException", 400)
    assert "signature" in message
    for key in ({"id": "ak_0000000000000000", "secret": "whatever"}, env.revoked):
        with pytest.raises(ClientError) as unknown:
            env.ds(key=key).describe_directories()
        assert _error(unknown)[0] == "UnrecognizedClientException"
    audited = run_ams("audit", "list", "--event", "1202", "--json", home=env.server.home)
    assert audited.returncode == 0, audited.stderr
    failures = [
        json.loads(e["details"]) if isinstance(e["details"], str) else e["details"]
        for e in json.loads(audited.stdout)
    ]
    reasons = sorted(d["reason"] for d in failures if d.get("endpoint") == "/aws/ds")
    assert reasons.count("bad signature") >= 1 and reasons.count("unknown access key") >= 2
    assert "wrong-secret" not in audited.stdout


@pytest.mark.parametrize("minutes", [20, -20])
def test_clock_skew_over_15_minutes_is_refused(
    env: Env, monkeypatch: pytest.MonkeyPatch, minutes: int
) -> None:
    real = botocore.auth.get_current_datetime
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: real() + timedelta(minutes=minutes))
    with pytest.raises(ClientError) as skewed:
        env.ds().describe_directories()
    code, message, _ = _error(skewed)
    assert code == "InvalidSignatureException"
    assert "15 minutes" in message
    # Within the window the same client is accepted.
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: real() + timedelta(minutes=10))
    assert env.ds().describe_directories()["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_reader_keys_may_only_describe(env: Env) -> None:
    reader = env.ds(key=env.reader)
    assert reader.describe_directories()["DirectoryDescriptions"]
    assert (
        reader.get_snapshot_limits(DirectoryId=env.multi_region_id)["SnapshotLimits"]["ManualSnapshotsLimit"]
        == 5
    )
    with pytest.raises(ClientError) as denied:
        reader.create_snapshot(DirectoryId=env.multi_region_id)
    code, message, _ = _error(denied)
    assert code == "AccessDeniedException" and "admin" in message


def test_unsigned_and_malformed_requests(env: Env) -> None:
    url = env.server.url + "/aws/ds"
    headers = {
        "X-Amz-Target": "DirectoryService_20150416.DescribeDirectories",
        "Content-Type": "application/x-amz-json-1.1",
    }
    answer = httpx.post(url, content=b"{}", headers=headers)
    assert answer.status_code == 403
    assert answer.headers["content-type"] == "application/x-amz-json-1.1"
    assert answer.headers["x-amzn-requestid"]
    assert answer.json()["__type"] == "MissingAuthenticationTokenException"
    garbled = httpx.post(
        url, content=b"{}", headers={**headers, "Authorization": "AWS4-HMAC-SHA256 nonsense"}
    )
    assert garbled.status_code == 400
    assert garbled.json()["__type"] == "IncompleteSignatureException"
    huge = httpx.post(url, content=b" " * (1024 * 1024 + 1), headers=headers)
    assert huge.json()["__type"] == "SerializationException"


def _signed_post(env: Env, body: bytes, target: str) -> httpx.Response:
    url = env.server.url + "/aws/ds"
    request = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={"X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"},
    )
    SigV4Auth(Credentials(env.admin["id"], env.admin["secret"]), "ds", "us-east-1").add_auth(request)
    return httpx.post(url, content=body, headers=dict(request.headers.items()))


@pytest.mark.parametrize(
    ("body", "target", "aws_type"),
    [
        (b"{not json", "DirectoryService_20150416.DescribeDirectories", "SerializationException"),
        (
            b"[" * 100_000 + b"]" * 100_000,
            "DirectoryService_20150416.DescribeDirectories",
            "SerializationException",
        ),
        (b"[]", "DirectoryService_20150416.DescribeDirectories", "InvalidParameterException"),
        (b"{}", "DirectoryService_20150416.AddRegion", "UnknownOperationException"),
        (b"{}", "SomethingElse.DescribeDirectories", "UnknownOperationException"),
    ],
)
def test_signed_but_malformed_requests(env: Env, body: bytes, target: str, aws_type: str) -> None:
    answer = _signed_post(env, body, target)
    assert answer.status_code == 400
    assert answer.headers["x-amzn-requestid"]
    assert answer.json()["__type"] == aws_type


# --- a captured request replayed as something else (issue 18, item 1) ----------------------

TARGET = "DirectoryService_20150416."
JSON_TYPE = ("Content-Type", "application/x-amz-json-1.1")


def _capture(env: Env, body: bytes, signed: dict[str, str]) -> list[tuple[str, str]]:
    """The header lines of a request signed over ``signed`` (plus host and x-amz-date) only."""
    request = AWSRequest(method="POST", url=env.server.url + "/aws/ds", data=body, headers=signed)
    SigV4Auth(Credentials(env.admin["id"], env.admin["secret"]), "ds", "us-east-1").add_auth(request)
    return list(request.headers.items())


def _send(env: Env, body: bytes, headers: list[tuple[str, str]]) -> httpx.Response:
    return httpx.post(env.server.url + "/aws/ds", content=body, headers=headers)


def _refused(answer: httpx.Response, aws_type: str) -> str:
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == "application/x-amz-json-1.1"
    assert answer.headers["x-amzn-requestid"]
    shape = answer.json()
    assert set(shape) == {"__type", "Message"}
    assert shape["__type"] == aws_type
    message: str = shape["Message"]
    return message


def test_a_minimally_signed_request_cannot_be_retargeted(env: Env) -> None:
    ds = env.ds()
    directory_id = _create_directory(ds, "replayed.example.com")
    body = json.dumps({"DirectoryId": directory_id}).encode()
    captured = _capture(env, body, {})
    authorization = dict(captured)["Authorization"]
    assert "SignedHeaders=host;x-amz-date," in authorization
    as_sent = [*captured, ("X-Amz-Target", TARGET + "DescribeSnapshots"), JSON_TYPE]
    message = _refused(_send(env, body, as_sent), "IncompleteSignatureException")
    assert "content-type, x-amz-target not signed" in message
    replayed = [*captured, ("X-Amz-Target", TARGET + "DeleteDirectory"), JSON_TYPE]
    _refused(_send(env, body, replayed), "IncompleteSignatureException")
    # Without the unsigned Content-Type the target alone is still refused.
    only_target = [*captured, ("X-Amz-Target", TARGET + "DeleteDirectory")]
    assert "x-amz-target not signed" in _refused(
        _send(env, body, only_target), "IncompleteSignatureException"
    )
    assert _stage(ds, directory_id) == "Active"
    # Signed with its target (as boto3 does), the same change breaks the signature.
    signed = _capture(env, body, {"X-Amz-Target": TARGET + "DescribeSnapshots", "Content-Type": JSON_TYPE[1]})
    assert _send(env, body, signed).status_code == 200
    swapped = [(k, TARGET + "DeleteDirectory" if k == "X-Amz-Target" else v) for k, v in signed]
    _refused(_send(env, body, swapped), "InvalidSignatureException")
    other = json.dumps({"DirectoryId": env.multi_region_id}).encode()
    _refused(_send(env, other, signed), "InvalidSignatureException")  # the body is signed too
    assert _stage(ds, directory_id) == "Active"


def test_a_second_target_header_is_refused(env: Env) -> None:
    ds = env.ds()
    directory_id = _create_directory(ds, "twice.example.com")
    body = json.dumps({"DirectoryId": directory_id}).encode()
    signed = _capture(env, body, {"X-Amz-Target": TARGET + "DescribeSnapshots", "Content-Type": JSON_TYPE[1]})
    for extra in (
        [("X-Amz-Target", TARGET + "DeleteDirectory")],
        [("x-amz-target", TARGET + "DescribeSnapshots")],
        [("Content-Type", "application/json")],
        [("X-Amz-Date", dict(signed)["X-Amz-Date"])],
    ):
        message = _refused(_send(env, body, [*signed, *extra]), "IncompleteSignatureException")
        assert "2 times: send it once" in message
    assert _stage(ds, directory_id) == "Active"


def test_presigned_query_strings_are_refused(env: Env) -> None:
    url = env.server.url + "/aws/ds"
    request = AWSRequest(
        method="POST",
        url=url,
        data=b"{}",
        headers={"X-Amz-Target": TARGET + "DescribeDirectories", "Content-Type": JSON_TYPE[1]},
    )
    SigV4QueryAuth(Credentials(env.admin["id"], env.admin["secret"]), "ds", "us-east-1").add_auth(request)
    assert "X-Amz-Signature=" in request.url
    presigned = httpx.post(request.url, content=b"{}", headers=dict(request.headers.items()))
    assert "presigned" in _refused(presigned, "IncompleteSignatureException")
    # A header-signed request that also carries X-Amz-* query parameters, in any spelling.
    for query in ("x-amz-signature=0", "X%2DAmz%2DCredential=x"):
        signed = AWSRequest(
            method="POST",
            url=f"{url}?{query}",
            data=b"{}",
            headers={"X-Amz-Target": TARGET + "DescribeDirectories", "Content-Type": JSON_TYPE[1]},
        )
        SigV4Auth(Credentials(env.admin["id"], env.admin["secret"]), "ds", "us-east-1").add_auth(signed)
        answer = httpx.post(f"{url}?{query}", content=b"{}", headers=dict(signed.headers.items()))
        _refused(answer, "IncompleteSignatureException")


def test_restore_older_than_180_days_is_refused(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Restarts the module's server 181 days in the future (AMS_CLOCK_OFFSET_SECONDS)."""
    ds = env.ds()
    directory_id = _create_directory(ds, "aged.example.com")
    snapshot_id = ds.create_snapshot(DirectoryId=directory_id)["SnapshotId"]
    for _ in range(100):
        if ds.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]["Status"] == "Completed":
            break
        time.sleep(0.1)
    env.server.stop()
    later = timedelta(days=181)
    env.server = Server(env.server.home, env={"AMS_CLOCK_OFFSET_SECONDS": str(int(later.total_seconds()))})
    # A client on today's clock is now 181 days off: refused as skewed.
    with pytest.raises(ClientError) as skewed:
        env.ds().describe_directories()
    assert _error(skewed)[0] == "InvalidSignatureException"
    real = botocore.auth.get_current_datetime
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: real() + later)
    future = env.ds()
    with pytest.raises(ClientError) as refused:
        future.restore_from_snapshot(SnapshotId=snapshot_id)
    code, message, status = _error(refused)
    assert (code, status) == ("ClientException", 400)
    assert "180 days" in message
    assert _stage(future, directory_id) == "Active"


def test_master_key_locked_is_a_service_exception(env: Env) -> None:
    """Runs last: it restarts the module's server with its service key gone (locked)."""
    env.server.stop()
    (env.server.home / "keys" / "service.key").unlink()
    env.server = Server(env.server.home)
    with env.server as server:
        ds = boto3.client(
            "ds",
            endpoint_url=server.url + "/aws/ds",
            region_name="us-east-1",
            aws_access_key_id=env.admin["id"],
            aws_secret_access_key=env.admin["secret"],
            config=Config(retries={"max_attempts": 1}),
        )
        with pytest.raises(ClientError) as locked:
            ds.describe_directories()
        code, message, status = _error(locked)
        assert (code, status) == ("ServiceException", 500)
        assert "master key locked: run `ams security unlock`" in message
