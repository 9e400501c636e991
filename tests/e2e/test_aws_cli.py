"""The real `aws` command (awscli from PyPI) against a real `ams serve`, with --endpoint-url."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import RECOVERY_PASSWORD, run_ams
from server import Server

AWS = Path(sys.executable).parent / "aws"


@dataclass
class Aws:
    server: Server
    env: dict[str, str]

    def run(self, *args: str, endpoint: str = "/aws/ds") -> subprocess.CompletedProcess[str]:
        argv = [str(AWS), "ds", *args, "--endpoint-url", self.server.url + endpoint, "--output", "json"]
        return subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=60)

    def json(self, *args: str, endpoint: str = "/aws/ds") -> Any:
        result = self.run(*args, endpoint=endpoint)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout) if result.stdout.strip() else {}


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Aws]:
    root = tmp_path_factory.mktemp("aws-cli")
    home = root / "home"
    init = run_ams("init", "--recovery-password-stdin", home=home, input=RECOVERY_PASSWORD + "\n")
    assert init.returncode == 0, init.stderr
    created = run_ams("apikey", "create", "--name", "awscli", "--role", "admin", "--json", home=home)
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    empty = root / "empty-aws-config"
    empty.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AMS_"))}
    env.update(
        {
            "AWS_ACCESS_KEY_ID": key["id"],
            "AWS_SECRET_ACCESS_KEY": key["secret"],
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(empty),
            "AWS_SHARED_CREDENTIALS_FILE": str(empty),
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_MAX_ATTEMPTS": "1",
            "HOME": str(root),
        }
    )
    with Server(home) as server:
        yield Aws(server, env)
    assert key["secret"] not in server.log.read_text()


def test_snapshot_flow_with_the_aws_command(aws: Aws) -> None:
    directory_id = aws.json(
        "create-microsoft-ad",
        "--name", "corp.example.com",
        "--short-name", "CORP",
        "--password", "Quartz-Meadow-81!",
        "--edition", "Standard",
        "--vpc-settings", "VpcId=vpc-01234567,SubnetIds=subnet-01234567,subnet-89abcdef",
    )["DirectoryId"]  # fmt: skip
    assert directory_id.startswith("d-")

    made = [aws.json("create-snapshot", "--directory-id", directory_id)["SnapshotId"] for _ in range(5)]
    assert len(set(made)) == 5
    sixth = aws.run("create-snapshot", "--directory-id", directory_id, "--name", "one-too-many")
    assert sixth.returncode != 0
    assert "SnapshotLimitExceededException" in sixth.stderr
    assert sixth.stdout == ""

    # --page-size 2 makes the command page with Limit=2 and NextToken until the end.
    everything = aws.json("describe-snapshots", "--directory-id", directory_id, "--page-size", "2")
    manual = [s["SnapshotId"] for s in everything["Snapshots"] if s["Type"] == "Manual"]
    assert sorted(manual) == sorted(made)
    # --max-items hands the paging to the user, one page of 2 at a time.
    first = aws.json(
        "describe-snapshots", "--directory-id", directory_id, "--max-items", "2", "--page-size", "2"
    )
    assert len(first["Snapshots"]) == 2 and first["NextToken"]
    second = aws.json(
        "describe-snapshots", "--directory-id", directory_id, "--max-items", "2", "--page-size", "2",
        "--starting-token", first["NextToken"],
    )  # fmt: skip
    assert len(second["Snapshots"]) == 2
    assert not {s["SnapshotId"] for s in first["Snapshots"]} & {s["SnapshotId"] for s in second["Snapshots"]}
    # The raw token, without the command's own paging.
    raw = aws.json("describe-snapshots", "--directory-id", directory_id, "--limit", "2", "--no-paginate")
    assert len(raw["Snapshots"]) == 2 and raw["NextToken"]
    tampered = aws.run(
        "describe-snapshots",
        "--directory-id",
        directory_id,
        "--no-paginate",
        "--next-token",
        raw["NextToken"] + "x",
    )
    assert tampered.returncode != 0 and "InvalidNextTokenException" in tampered.stderr

    limits = aws.json("get-snapshot-limits", "--directory-id", directory_id)["SnapshotLimits"]
    assert limits["ManualSnapshotsLimitReached"] is True

    assert aws.run("restore-from-snapshot", "--snapshot-id", made[0]).returncode == 0
    stage = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        described = aws.json("describe-directories", "--directory-ids", directory_id)
        stage = described["DirectoryDescriptions"][0]["Stage"]
        if stage == "Active":
            break
        assert stage == "Restoring"
        time.sleep(0.2)
    assert stage == "Active"

    assert aws.json("delete-snapshot", "--snapshot-id", made[1])["SnapshotId"] == made[1]
    gone = aws.run("delete-snapshot", "--snapshot-id", made[1])
    assert gone.returncode != 0 and "EntityDoesNotExistException" in gone.stderr
    # The same through POST / with the target header (--endpoint-url without a path).
    left = aws.json("describe-snapshots", "--snapshot-ids", *made[2:], endpoint="")
    assert sorted(s["SnapshotId"] for s in left["Snapshots"]) == sorted(made[2:])


def test_the_aws_command_reports_refusals(aws: Aws) -> None:
    bad = aws.run("describe-directories", "--directory-ids", "d-XYZ")
    assert bad.returncode != 0 and "InvalidParameterException" in bad.stderr
    wrong = Aws(aws.server, {**aws.env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    refused = wrong.run("describe-directories")
    assert refused.returncode != 0 and "InvalidSignatureException" in refused.stderr
    assert "not-the-secret" not in refused.stderr
