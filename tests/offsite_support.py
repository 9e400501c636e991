"""A real S3 server for the offsite tests: moto's standalone server, its own process on loopback.

Spoken to over HTTP with ``endpoint_url`` (never moto's in-process patching). IAM
authentication is on: the first few requests (no authentication) make an access key with
every S3 permission and one without ``s3:DeleteObject``; after them, every request must be
signed with a key the server knows, so a wrong secret is refused as AWS refuses it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from server import free_port

# The requests made before authentication starts (see make_keys).
_NO_AUTH = 6


@dataclass
class Key:
    access_key_id: str
    secret: str


class MotoServer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.full: Key | None = None
        self.no_delete: Key | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(_NO_AUTH), "MOTO_PORT": str(self.port)}
        with open(self.folder / f"moto-{self.port}.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(self.endpoint + "/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError("moto server did not start")
        self._make_keys()

    def _make_keys(self) -> None:
        iam = self.client("iam", Key("bootstrap", "bootstrap"))
        everything = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        no_delete = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": ["s3:ListBucket", "s3:GetObject", "s3:PutObject"],
                    "Resource": "*",
                }
            ],
        }
        keys = []
        for user, policy in (("ams", everything), ("ams-nodelete", no_delete)):
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps(policy))
            made = iam.create_access_key(UserName=user)["AccessKey"]
            keys.append(Key(made["AccessKeyId"], made["SecretAccessKey"]))
        self.full, self.no_delete = keys

    def client(self, service: str = "s3", key: Key | None = None) -> Any:
        import boto3

        key = key or self.full
        assert key is not None
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            aws_access_key_id=key.access_key_id,
            aws_secret_access_key=key.secret,
            region_name="us-east-1",
        )

    def env(self, key: Key | None = None) -> dict[str, str]:
        """The AWS chain's variables for the `ams` and `aws` commands."""
        key = key or self.full
        assert key is not None
        return {
            "AWS_ACCESS_KEY_ID": key.access_key_id,
            "AWS_SECRET_ACCESS_KEY": key.secret,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        }

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None
