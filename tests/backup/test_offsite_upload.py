"""The offsite upload's own cost (issue 16's benchmark): what each part costs the client.

Against moto's standalone server on loopback, with the real boto3 client AMS makes (its
requests are only observed, through botocore's event hooks): each part is hashed once,
SHA-256 only (no MD5 pass), and the copy is proven by the service's SHA-256 checksum, not
by reading the object back.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ams.backup import offsite, targets
from ams.instance import Instance
from offsite_support import MotoServer


@pytest.fixture
def moto_server(tmp_path: Path) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_multipart_copy_hashes_each_part_once_and_is_proven_by_the_service_checksum(
    instance: Instance, moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in moto_server.env().items():
        monkeypatch.setenv(name, value)
    moto_server.client().create_bucket(Bucket="ams-upload-cost")
    targets.add_target(
        instance, name="t", url="s3://ams-upload-cost/", actor="test", endpoint_url=moto_server.endpoint
    )
    calls: list[tuple[str, dict[str, Any]]] = []
    real_client = targets.target_client

    def observed(instance: Instance, target: targets.Target) -> tuple[Any, Any]:
        client, where = real_client(instance, target)

        def record(model: Any, params: dict[str, Any], **_: Any) -> None:
            calls.append((model.name, {k: v for k, v in params.items() if k != "body"}))

        client.meta.events.register("before-call.s3", record)
        return client, where

    monkeypatch.setattr(offsite, "target_client", observed)
    monkeypatch.setattr(offsite, "PART_SIZE", 5 << 20)
    (instance.home.config_dir / "templates" / "big.bin").write_bytes(os.urandom(11 << 20))
    from ams import backup

    result = backup.create_backup(instance, actor="test")
    assert result.offsite is not None
    [copy] = result.offsite
    assert copy["ok"], copy["error"]
    assert copy["checked_by"] == "service sha256"
    parts = [params for name, params in calls if name == "UploadPart"]
    assert len(parts) == -(-result.size_bytes // (5 << 20)) >= 3
    for params in parts:
        headers = {k.lower() for k in params["headers"]}
        assert "x-amz-checksum-sha256" in headers
        assert "content-md5" not in headers  # no second hash of every byte
    names = [name for name, _ in calls]
    assert "GetObject" not in names  # proven by the service's checksum, not read back
    assert names.count("HeadObject") == 1
