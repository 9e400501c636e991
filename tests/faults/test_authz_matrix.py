"""Issue 13, the authorization matrix, against one real `ams serve` for the whole module.

Every REST route (walked from the FastAPI app), every console page and form, and every AWS
Directory Service operation, called by each kind of caller; the status each cell must
answer is in ONE table, :data:`MATRIX`. A route, page or operation without its row fails
:func:`test_every_route_has_its_row`: a new one cannot be added without deciding who may
call it. Each cell is a test of its own (``test_cell[api GET /api/v1/status-reader]``).

Failed authentication is throttled per client address and per key id (10 a window,
ams.security.throttle), so each cell comes from its own loopback address, and credentials
that fail many times (a revoked key, device tokens sent where an API key belongs) come from
pools that hand out a fresh one every few uses. Each is the same kind of credential.

A device's password is never reachable with another device's token: every cell's body is
searched for device A's passwords (two versions, set by the real ams-agent), which only the
reader's and admin's password reads may show.
"""

from __future__ import annotations

import html
import itertools
import json
import os
import re
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from fastapi.routing import iter_route_contexts
from starlette.routing import Mount

from ams import apikeys, users
from ams.api import create_app
from ams.api.aws_ds.validation import OPERATIONS
from ams.apikeys import Role
from ams.clock import SystemClock
from ams.directory import directories, objects, snapshots
from ams.directory.entry import Entry
from ams.home import Home
from ams.instance import Instance, create_instance, open_instance
from ams.vault import certificates, devices, regkeys
from conftest import RECOVERY_PASSWORD
from server import FileAgent, Server

# --- the table ------------------------------------------------------------------------------

# Who calls. REST and AWS: no credentials; a malformed one; a revoked API key; a reader API
# key; an admin API key; device A's token (on the agent routes; elsewhere any device's);
# device B's token (on the agent routes; elsewhere any device's), and a disabled device's.
# AWS requests are SigV4-signed with the credential as access key id and secret.
# Console: no session; a cookie that is no session; a logged-out session; a reader's; an
# admin's; a session of a user disabled since; an admin's session posting without the CSRF
# token, and with a forged one; an admin API key as bearer (not a console credential).
COLUMNS: dict[str, tuple[str, ...]] = {
    "api": ("none", "malformed", "revoked", "reader", "admin", "agent", "other_agent", "disabled"),
    "aws": ("none", "malformed", "revoked", "reader", "admin", "agent", "other_agent", "disabled"),
    "web": (
        "none", "bad_cookie", "ended", "reader", "admin", "disabled_user", "no_csrf", "forged_csrf", "api_key"
    ),
}  # fmt: skip

# The expected HTTP status of each cell, in COLUMNS order. REST and console rows are
# "METHOD path" as the app declares it; AWS rows are the operation (sent to POST /aws/ds).
# L: the console's redirect to its login page (303 to /login?next=...), nothing done; a
# console 303 elsewhere is the redirect after a form that did its work.
L = LOGIN = "login"
# fmt: off
MATRIX: dict[tuple[str, str], tuple[int | str, ...]] = {
    #                                                           none mal  rev  rdr  adm  agt  oth  dis
    ("api", "GET /healthz"):                                   (200, 200, 200, 200, 200, 200, 200, 200),
    ("api", "GET /metrics"):                                   (200, 200, 200, 200, 200, 200, 200, 200),
    ("api", "GET /openapi.json"):                              (200, 200, 200, 200, 200, 200, 200, 200),
    ("api", "HEAD /openapi.json"):                             (200, 200, 200, 200, 200, 200, 200, 200),
    ("api", "GET /docs"):                                      (200, 200, 200, 200, 200, 200, 200, 200),
    ("api", "GET /docs/oauth2-redirect"):                      (200, 200, 200, 200, 200, 200, 200, 200),
    ("api", "GET /docs/static/{path}"):                        (200, 200, 200, 200, 200, 200, 200, 200),
    ("api", "GET /api/v1/status"):                             (401, 401, 401, 200, 200, 401, 401, 401),
    ("api", "GET /api/v1/apikeys"):                            (401, 401, 401, 403, 200, 401, 401, 401),
    ("api", "POST /api/v1/apikeys"):                           (401, 401, 401, 403, 201, 401, 401, 401),
    ("api", "DELETE /api/v1/apikeys/{key_id}"):                (401, 401, 401, 403, 200, 401, 401, 401),
    ("api", "GET /api/v1/audit"):                              (401, 401, 401, 200, 200, 401, 401, 401),
    ("api", "GET /api/v1/certificates"):                       (401, 401, 401, 200, 200, 401, 401, 401),
    ("api", "GET /api/v1/certificates/{thumbprint}"):          (401, 401, 401, 200, 200, 401, 401, 401),
    ("api", "POST /api/v1/certificates"):                      (401, 401, 401, 403, 201, 401, 401, 401),
    ("api", "POST /api/v1/certificates/{thumbprint}/activate"): (401, 401, 401, 403, 200, 401, 401, 401),
    ("api", "POST /api/v1/certificates/{thumbprint}/lost"):    (401, 401, 401, 403, 200, 401, 401, 401),
    ("api", "POST /api/v1/agent/register"):                    (201, 201, 201, 201, 201, 201, 201, 201),
    ("api", "GET /api/v1/agent/password"):                     (401, 401, 401, 401, 401, 200, 200, 403),
    ("api", "POST /api/v1/agent/password"):                    (401, 401, 401, 401, 401, 422, 422, 403),
    ("api", "DELETE /api/v1/agent/password/{request_id}"):     (401, 401, 401, 401, 401, 409, 404, 403),
    ("api", "GET /api/v1/devices"):                            (401, 401, 401, 200, 200, 401, 401, 401),
    ("api", "GET /api/v1/devices/{device}"):                   (401, 401, 401, 200, 200, 401, 401, 401),
    ("api", "GET /api/v1/devices/{device}/password"):          (401, 401, 401, 200, 200, 401, 401, 401),
    ("api", "POST /api/v1/devices/{device}/approve"):          (401, 401, 401, 403, 200, 401, 401, 401),
    ("api", "POST /api/v1/devices/{device}/expire"):           (401, 401, 401, 403, 200, 401, 401, 401),
    ("api", "GET /api/v1/directories"):                        (401, 401, 401, 200, 200, 401, 401, 401),
    ("api", "POST /api/v1/directories"):                       (401, 401, 401, 403, 201, 401, 401, 401),
    ("api", "GET /api/v1/directories/{directory_id}"):         (401, 401, 401, 200, 200, 401, 401, 401),
    ("api", "DELETE /api/v1/directories/{directory_id}"):      (401, 401, 401, 403, 200, 401, 401, 401),
    ("api", "GET /api/v1/directories/{directory_id}/objects"): (401, 401, 401, 200, 200, 401, 401, 401),
    ("api", "POST /api/v1/directories/{directory_id}/objects"): (401, 401, 401, 403, 201, 401, 401, 401),
    ("api", "GET /api/v1/directories/{directory_id}/objects/{dn:dn}"):
                                                               (401, 401, 401, 200, 200, 401, 401, 401),
    ("api", "PATCH /api/v1/directories/{directory_id}/objects/{dn:dn}"):
                                                               (401, 401, 401, 403, 200, 401, 401, 401),
    ("api", "DELETE /api/v1/directories/{directory_id}/objects/{dn:dn}"):
                                                               (401, 401, 401, 403, 200, 401, 401, 401),
    ("api", "POST /api/v1/directories/{directory_id}/import"): (401, 401, 401, 403, 200, 401, 401, 401),
    ("api", "GET /api/v1/directories/{directory_id}/export"):  (401, 401, 401, 200, 200, 401, 401, 401),
    ("api", "GET /api/v1/directories/{directory_id}/snapshots"): (401, 401, 401, 200, 200, 401, 401, 401),
    ("api", "POST /api/v1/directories/{directory_id}/snapshots"): (401, 401, 401, 403, 201, 401, 401, 401),
    ("api", "GET /api/v1/directories/{directory_id}/snapshots/limits"):
                                                               (401, 401, 401, 200, 200, 401, 401, 401),
    ("api", "GET /api/v1/snapshots"):                          (401, 401, 401, 200, 200, 401, 401, 401),
    ("api", "GET /api/v1/snapshots/{snapshot_id}"):            (401, 401, 401, 200, 200, 401, 401, 401),
    ("api", "POST /api/v1/snapshots/{snapshot_id}/restore"):   (401, 401, 401, 403, 202, 401, 401, 401),
    ("api", "DELETE /api/v1/snapshots/{snapshot_id}"):         (401, 401, 401, 403, 200, 401, 401, 401),
    ("api", "GET /api/v1/backups"):                            (401, 401, 401, 200, 200, 401, 401, 401),
    ("api", "POST /api/v1/backups"):                           (401, 401, 401, 403, 201, 401, 401, 401),
    ("api", "GET /api/v1/backups/status"):                     (401, 401, 401, 200, 200, 401, 401, 401),
    # Offsite targets: none is configured here, so an admin's call on one names it as unknown
    # (404) and a bad target is refused (422) before anything is reached.
    ("api", "GET /api/v1/backups/targets"):                    (401, 401, 401, 200, 200, 401, 401, 401),
    ("api", "POST /api/v1/backups/targets"):                   (401, 401, 401, 403, 422, 401, 401, 401),
    ("api", "DELETE /api/v1/backups/targets/{name}"):          (401, 401, 401, 403, 404, 401, 401, 401),
    ("api", "POST /api/v1/backups/targets/{name}/test"):       (401, 401, 401, 403, 404, 401, 401, 401),
    ("api", "POST /api/v1/backups/targets/{name}/sync"):       (401, 401, 401, 403, 404, 401, 401, 401),
    ("api", "GET /api/v1/backups/targets/{name}/objects"):     (401, 401, 401, 404, 404, 401, 401, 401),
    ("api", "POST /api/v1/backups/targets/{name}/drill"):      (401, 401, 401, 403, 404, 401, 401, 401),
    # AWS Directory Service: the operation, sent to POST /aws/ds (and DescribeDirectories to each path)
    #                                                           none mal  rev  rdr  adm  agt  oth  dis
    ("aws", "CreateMicrosoftAD"):                              (403, 400, 400, 400, 200, 400, 400, 400),
    ("aws", "ConnectDirectory"):                               (403, 400, 400, 400, 200, 400, 400, 400),
    ("aws", "DeleteDirectory"):                                (403, 400, 400, 400, 200, 400, 400, 400),
    ("aws", "DescribeDirectories"):                            (403, 400, 400, 200, 200, 400, 400, 400),
    ("aws", "DescribeRegions"):                                (403, 400, 400, 200, 200, 400, 400, 400),
    ("aws", "CreateSnapshot"):                                 (403, 400, 400, 400, 200, 400, 400, 400),
    ("aws", "DeleteSnapshot"):                                 (403, 400, 400, 400, 200, 400, 400, 400),
    ("aws", "RestoreFromSnapshot"):                            (403, 400, 400, 400, 200, 400, 400, 400),
    ("aws", "DescribeSnapshots"):                              (403, 400, 400, 200, 200, 400, 400, 400),
    ("aws", "GetSnapshotLimits"):                              (403, 400, 400, 200, 200, 400, 400, 400),
    ("aws", "DescribeDirectories via POST /aws/ds"):           (403, 400, 400, 200, 200, 400, 400, 400),
    ("aws", "DescribeDirectories via POST /aws/ds/"):          (403, 400, 400, 200, 200, 400, 400, 400),
    ("aws", "DescribeDirectories via POST /"):                 (403, 400, 400, 200, 200, 400, 400, 400),
    # console
    #                                                           none cook end  rdr  adm  dis  -csrf fake key
    ("web", "GET /login"):                                     (200, 200, 200, 200, 200, 200, 200, 200, 200),
    ("web", "POST /login"):                                    (303, 303, 303, 303, 303, 303, 403, 403, 303),
    ("web", "POST /logout"):                                   (L,   L,   L,   303, 303, L,   403, 403, L),
    ("web", "GET /"):                                          (L,   L,   L,   200, 200, L,   200, 200, L),
    ("web", "GET /audit"):                                     (L,   L,   L,   200, 200, L,   200, 200, L),
    ("web", "GET /database"):                                  (L,   L,   L,   200, 200, L,   200, 200, L),
    ("web", "POST /database/backup"):                          (L,   L,   L,   403, 303, L,   403, 403, L),
    ("web", "GET /database/backup/progress"):                  (L,   L,   L,   200, 200, L,   200, 200, L),
    ("web", "POST /database/schedule"):                        (L,   L,   L,   403, 200, L,   403, 403, L),
    ("web", "POST /database/verify"):                          (L,   L,   L,   403, 404, L,   403, 403, L),
    ("web", "POST /database/rescan"):                          (L,   L,   L,   403, 200, L,   403, 403, L),
    ("web", "GET /security"):                                  (L,   L,   L,   200, 200, L,   200, 200, L),
    ("web", "POST /security/recovery-password"):               (L,   L,   L,   403, 200, L,   403, 403, L),
    ("web", "POST /security/recovery-password/generate"):      (L,   L,   L,   403, 200, L,   403, 403, L),
    ("web", "POST /security/unlock"):                          (L,   L,   L,   403, 200, L,   403, 403, L),
    ("web", "GET /certificates"):                              (L,   L,   L,   200, 200, L,   200, 200, L),
    ("web", "POST /certificates/generate"):                    (L,   L,   L,   403, 303, L,   403, 403, L),
    ("web", "POST /certificates/{thumbprint}/activate"):       (L,   L,   L,   403, 303, L,   403, 403, L),
    ("web", "POST /certificates/{thumbprint}/export"):         (L,   L,   L,   403, 200, L,   403, 403, L),
    ("web", "POST /certificates/import"):                      (L,   L,   L,   403, 422, L,   403, 403, L),
    ("web", "POST /certificates/{thumbprint}/lost"):           (L,   L,   L,   403, 200, L,   403, 403, L),
    ("web", "POST /certificates/policy"):                      (L,   L,   L,   403, 303, L,   403, 403, L),
    ("web", "GET /devices"):                                   (L,   L,   L,   200, 200, L,   200, 200, L),
    ("web", "POST /devices/expire"):                           (L,   L,   L,   403, 303, L,   403, 403, L),
    ("web", "GET /devices/{ref}"):                             (L,   L,   L,   200, 200, L,   200, 200, L),
    ("web", "POST /devices/{ref}/password"):                   (L,   L,   L,   200, 200, L,   403, 403, L),
    ("web", "POST /devices/{ref}/expire"):                     (L,   L,   L,   403, 200, L,   403, 403, L),
    ("web", "GET /directories"):                               (L,   L,   L,   200, 200, L,   200, 200, L),
    ("web", "GET /directories/{directory_id}"):                (L,   L,   L,   200, 200, L,   200, 200, L),
    ("web", "GET /directories/{directory_id}/stage"):          (L,   L,   L,   200, 200, L,   200, 200, L),
    ("web", "POST /directories/{directory_id}/snapshots"):     (L,   L,   L,   403, 303, L,   403, 403, L),
    ("web", "POST /directories/{directory_id}/snapshots/{snapshot_id}/restore"):
                                                               (L,   L,   L,   403, 303, L,   403, 403, L),
    ("web", "POST /directories/{directory_id}/snapshots/{snapshot_id}/delete"):
                                                               (L,   L,   L,   403, 303, L,   403, 403, L),
    ("web", "GET /static/{path}"):                             (200, 200, 200, 200, 200, 200, 200, 200, 200),
}
# fmt: on

# --- how each row is called -----------------------------------------------------------------

STRONG = "Harbour-Quill-Violet-2271"
ADMIN_PASSWORD = "Violet-Harbour-Engine-58"
READER_PASSWORD = "Copper-Meadow-Signal-93"
DORA_PASSWORD = "Saffron-Kettle-Orbit-64"
VPC = {"VpcId": "vpc-0123456789abcdef0", "SubnetIds": ["subnet-01234567", "subnet-89abcdef"]}
BASE = "dc=corp,dc=example,dc=com"


@dataclass(frozen=True)
class Call:
    """What a row sends: path parameters (names in World.ids), a JSON body, a form, content."""

    params: dict[str, str] = field(default_factory=dict)
    json: Any = None
    form: dict[str, str] | None = None
    content: bytes | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None


_LDIF = b"dn: cn=imported,dc=main,dc=example,dc=com\nobjectClass: person\ncn: imported\nsn: x\n\n"
CALLS: dict[tuple[str, str], Call] = {
    ("api", "GET /docs/static/{path}"): Call({"path": "swagger-ui.css"}),
    ("api", "POST /api/v1/apikeys"): Call(json={"name": "made", "role": "reader"}),
    ("api", "POST /api/v1/certificates"): Call(json={"scope": "$scope"}),
    ("api", "POST /api/v1/certificates/{thumbprint}/activate"): Call({"thumbprint": "cert_activate_api"}),
    ("api", "POST /api/v1/certificates/{thumbprint}/lost"): Call({"thumbprint": "cert_lost_api"}),
    ("api", "POST /api/v1/agent/register"): Call(
        json={"registration_key": "$registration_key", "name": "new"}
    ),
    # A well-formed report whose blob does not decrypt: who passes authentication gets 4xx.
    ("api", "POST /api/v1/agent/password"): Call(json={"account": "root", "version": 9, "blob": "QU1TUA=="}),
    ("api", "POST /api/v1/devices/{device}/expire"): Call({"device": "pool_device"}),
    ("api", "POST /api/v1/backups/targets"): Call(json={"name": "offsite", "url": "https://not-s3"}),
    ("api", "DELETE /api/v1/backups/targets/{name}"): Call({"name": "nosuch"}),
    ("api", "POST /api/v1/backups/targets/{name}/test"): Call({"name": "nosuch"}),
    ("api", "POST /api/v1/backups/targets/{name}/sync"): Call({"name": "nosuch"}),
    ("api", "GET /api/v1/backups/targets/{name}/objects"): Call({"name": "nosuch"}),
    ("api", "POST /api/v1/backups/targets/{name}/drill"): Call({"name": "nosuch"}),
    ("api", "POST /api/v1/directories"): Call(json={"dns_name": "made.example.com"}),
    ("api", "DELETE /api/v1/directories/{directory_id}"): Call({"directory_id": "doomed_dir_api"}),
    ("api", "POST /api/v1/directories/{directory_id}/objects"): Call(
        json={"dn": "$new_dn", "object_classes": ["person"], "attributes": {"cn": "new", "sn": "x"}}
    ),
    ("api", "PATCH /api/v1/directories/{directory_id}/objects/{dn:dn}"): Call(json={"replace": {"sn": "y"}}),
    ("api", "DELETE /api/v1/directories/{directory_id}/objects/{dn:dn}"): Call({"dn": "doomed_dn"}),
    ("api", "POST /api/v1/directories/{directory_id}/import"): Call(content=_LDIF),
    ("api", "POST /api/v1/directories/{directory_id}/snapshots"): Call(json={"name": "matrix"}),
    ("api", "POST /api/v1/snapshots/{snapshot_id}/restore"): Call({"snapshot_id": "restore_snapshot_api"}),
    ("api", "DELETE /api/v1/snapshots/{snapshot_id}"): Call({"snapshot_id": "doomed_snapshot_api"}),
    ("aws", "CreateMicrosoftAD"): Call(
        json={"Name": "aws-made.example.com", "Password": "Quartz-Meadow-81!", "VpcSettings": VPC}
    ),
    ("aws", "ConnectDirectory"): Call(
        json={
            "Name": "connected.example.com",
            "Password": "Quartz-Meadow-81!",
            "Size": "Small",
            "ConnectSettings": {**VPC, "CustomerDnsIps": ["10.0.0.2"], "CustomerUserName": "svc-ams"},
        }
    ),
    ("aws", "DeleteDirectory"): Call(json={"DirectoryId": "$doomed_dir_aws"}),
    ("aws", "DescribeDirectories"): Call(json={}),
    ("aws", "DescribeRegions"): Call(json={"DirectoryId": "$directory_id"}),
    ("aws", "CreateSnapshot"): Call(json={"DirectoryId": "$directory_id"}),
    ("aws", "DeleteSnapshot"): Call(json={"SnapshotId": "$doomed_snapshot_aws"}),
    ("aws", "RestoreFromSnapshot"): Call(json={"SnapshotId": "$restore_snapshot_aws"}),
    ("aws", "DescribeSnapshots"): Call(json={}),
    ("aws", "GetSnapshotLimits"): Call(json={"DirectoryId": "$directory_id"}),
    **{
        ("aws", f"DescribeDirectories via {path}"): Call(json={})
        for path in ("POST /aws/ds", "POST /aws/ds/", "POST /")
    },
    ("web", "POST /login"): Call(form={"name": "rita", "password": READER_PASSWORD}),
    ("web", "POST /database/schedule"): Call(form={"when": "every", "every": "100w"}),
    ("web", "POST /database/verify"): Call(form={"backup_id": "no-such-backup"}),
    ("web", "POST /security/recovery-password"): Call(form={"password": STRONG, "confirm": STRONG}),
    ("web", "POST /security/unlock"): Call(form={"password": STRONG}),
    ("web", "POST /certificates/generate"): Call(form={"scope": "$scope"}),
    ("web", "POST /certificates/{thumbprint}/activate"): Call({"thumbprint": "cert_activate_web"}),
    ("web", "POST /certificates/{thumbprint}/export"): Call(
        {"thumbprint": "cert_activate_web"}, form={"password": STRONG, "confirm": STRONG}
    ),
    ("web", "POST /certificates/import"): Call(
        files={"pfx": ("x.pfx", b"not a pfx", "application/x-pkcs12")}
    ),
    ("web", "POST /certificates/{thumbprint}/lost"): Call(
        {"thumbprint": "cert_lost_web"}, form={"confirm": "yes"}
    ),
    ("web", "POST /certificates/policy"): Call(form={"scope": "agent"}),
    ("web", "POST /devices/expire"): Call(form={"device": "$pool_device"}),
    ("web", "POST /devices/{ref}/expire"): Call({"ref": "pool_device"}),
    ("web", "POST /directories/{directory_id}/snapshots"): Call(form={"name": "matrix-web"}),
    ("web", "POST /directories/{directory_id}/snapshots/{snapshot_id}/restore"): Call(
        {"directory_id": "restore_dir_web", "snapshot_id": "restore_snapshot_web"}, form={"confirm": "yes"}
    ),
    ("web", "POST /directories/{directory_id}/snapshots/{snapshot_id}/delete"): Call(
        {"directory_id": "aux_directory", "snapshot_id": "doomed_snapshot_web"}
    ),
    ("web", "GET /static/{path}"): Call({"path": "ams.css"}),
}


# Read at import: the suite's autouse fixture clears AMS_* variables around each test.
_FIGURES = os.environ.get("AMS_FAULT_FIGURES")


def record(area: str, what: str, tried: int, outcome: str, seed: int | str) -> None:
    """One figure for docs/reliability.md, when AMS_FAULT_FIGURES names a folder (the same
    JSON lines as the crash harness's tests/faults/figures.py writes)."""
    folder = _FIGURES
    if folder:
        line = {"area": area, "what": what, "tried": tried, "outcome": outcome, "seed": seed}
        with open(Path(folder) / f"{area}.jsonl", "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")


# --- the world the cells run in -------------------------------------------------------------

ROTATE_EVERY = 4  # uses of a pooled credential before the next (the throttle allows 10)


class Pool:
    """Credentials of one kind, a fresh one every few uses (failures are counted per key id)."""

    def __init__(self, make: Callable[[], str]) -> None:
        self.make = make
        self.current = ""
        self.uses = ROTATE_EVERY
        self.lock = threading.Lock()

    def take(self) -> str:
        with self.lock:
            if self.uses >= ROTATE_EVERY:
                self.current, self.uses = self.make(), 0
            self.uses += 1
            return self.current


@dataclass
class WebSession:
    cookie: str
    csrf: str


@dataclass
class World:
    server: Server
    instance: Instance
    ids: dict[str, str]
    tokens: dict[str, str]
    pools: dict[str, Pool]
    web: dict[str, WebSession]
    passwords_of_a: list[str]
    addresses: Iterator[str] = field(default_factory=lambda: _addresses())
    address_lock: threading.Lock = field(default_factory=threading.Lock)
    passed: int = 0


def _addresses() -> Iterator[str]:
    """127.1.0.1, 127.1.0.2, ...: Linux answers all of 127/8 on loopback."""
    for n in itertools.count(1):
        yield f"127.1.{n // 250}.{n % 250 + 1}"


_CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


def _csrf_of(page: str) -> str:
    found = _CSRF.search(page)
    assert found, page[:300]
    return found.group(1)


# Plain HTTP; one TLS context for every client, not one each (loading it costs 0.1 s).
_TLS = ssl.create_default_context()


def _client(server: Server, address: str | None = None) -> httpx.Client:
    transport = httpx.HTTPTransport(verify=_TLS, local_address=address)
    return httpx.Client(base_url=server.url, timeout=30, transport=transport)


def _login(server: Server, name: str, password: str) -> WebSession:
    with _client(server) as client:
        token = _csrf_of(client.get("/login").text)
        answer = client.post("/login", data={"csrf_token": token, "name": name, "password": password})
        assert answer.status_code == 303, answer.text[:300]
        cookie = client.cookies["ams_session"]
        return WebSession(cookie, _csrf_of(client.get("/").text))


def _request_ids(home: Path, device_id: str) -> list[str]:
    with sqlite3.connect(f"file:{home / 'data' / 'ams.db'}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT request_id FROM device_passwords WHERE device_id = ? ORDER BY version", (device_id,)
        ).fetchall()
    return [r[0] for r in rows]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("authz")
    home = Home(root / "home")
    create_instance(home, recovery_password=RECOVERY_PASSWORD, actor="test", clock=SystemClock())
    instance = open_instance(home, SystemClock())
    size, certificates.KEY_SIZE = certificates.KEY_SIZE, 2048  # the certificates made here only
    try:
        built = _build(root, home.root, instance)
        certificates.KEY_SIZE = size
        try:
            yield built
        finally:
            built.server.stop()
            record(
                "authz",
                "authorization matrix cells (route x caller)",
                len(CELLS),
                f"{built.passed} as the table says",
                "- (no randomness)",
            )
    finally:
        certificates.KEY_SIZE = size
        instance.close()


def _build(root: Path, home: Path, instance: Instance) -> World:
    ids: dict[str, str] = {}
    for name, role, password in (
        ("alice", Role.ADMIN, ADMIN_PASSWORD),
        ("rita", Role.READER, READER_PASSWORD),
        ("dora", Role.ADMIN, DORA_PASSWORD),
    ):
        users.create_user(instance, name, role, password, "test")
    reader = apikeys.create(instance, "reader", Role.READER, "test")
    admin = apikeys.create(instance, "admin", Role.ADMIN, "test")
    ids["key_id"] = apikeys.create(instance, "doomed", Role.READER, "test").info.id
    regkey = regkeys.create(instance, "fleet", actor="test").key
    ids["registration_key"] = regkey

    def directory(name: str, entries: int = 0) -> str:
        made = directories.create(instance, dns_name=f"{name}.example.com", short_name=None, actor="test").id
        base = f"dc={name},dc=example,dc=com"
        batch = [Entry(base, ["domain"], {"dc": [name]})]
        batch += [
            Entry(f"cn=u{i},{base}", ["person"], {"cn": [f"u{i}"], "sn": ["x"]}) for i in range(entries)
        ]
        objects.import_entries(instance, made, batch, actor="test")
        return made

    def snapshot(directory_id: str) -> str:
        return snapshots.create(instance, directory_id, actor="test").id

    main = ids["directory_id"] = directory("main", 3)
    ids["dn"] = "cn=u0,dc=main,dc=example,dc=com"
    ids["doomed_dn"] = "cn=u1,dc=main,dc=example,dc=com"
    ids["new_dn"] = "cn=new,dc=main,dc=example,dc=com"
    ids["snapshot_id"] = snapshot(main)
    aux = directory("aux")
    for name in ("api", "aws", "web"):
        ids[f"doomed_snapshot_{name}"] = snapshot(aux)
        ids[f"restore_dir_{name}"] = restoring = directory(f"restore-{name}", 1)
        ids[f"restore_snapshot_{name}"] = snapshot(restoring)
    ids["aux_directory"] = aux
    ids["doomed_dir_api"] = directory("doomed-api")
    ids["doomed_dir_aws"] = directory("doomed-aws")
    ids["scope"] = main
    for name in ("activate_api", "activate_web", "lost_api", "lost_web"):
        ids[f"cert_{name}"] = certificates.create(instance, main, "test").thumbprint
    ids["thumbprint"] = certificates.ensure_active(instance, "agent", "test").thumbprint

    def revoked() -> str:
        made = apikeys.create(instance, "to-revoke", Role.ADMIN, "test")
        apikeys.revoke(instance, made.info.id, "test")
        return made.token

    def device(disabled: bool = False) -> Callable[[], str]:
        def make() -> str:
            made = devices.register(instance, regkey, f"pool-{time.monotonic_ns()}")
            if disabled:
                devices.disable(instance, made.device_id, "test")
            return made.token

        return make

    server = Server(home)
    try:
        # Devices A and B, with the real ams-agent: A reports two passwords, B one.
        agent_a, agent_b = FileAgent(root / "agent-a"), FileAgent(root / "agent-b")
        for agent, name in ((agent_a, "host-a"), (agent_b, "host-b")):
            registered = agent._run(
                "register", "--server", server.url, "--name", name, "--registration-key-stdin", input=regkey
            )
            assert registered.returncode == 0, registered.stderr
        a = ids["device"] = ids["ref"] = json.loads(agent_a.state.read_text())["device_id"]
        passwords = []
        for _ in range(2):
            done = agent_a.run_once()
            assert done.returncode == 0, done.stderr
            passwords.append(agent_a.password)
            devices.expire(instance, "test", device=a)
        assert agent_b.run_once().returncode == 0
        ids["pool_device"] = devices.register(instance, regkey, "to-expire").device_id
        # A's first update, no longer current: A may not undo it (409), B does not see it (404).
        ids["request_id"] = _request_ids(home, a)[0]
        tokens = {
            "reader": reader.token,
            "admin": admin.token,
            "agent": json.loads(agent_a.state.read_text())["token"],
            "other_agent": json.loads(agent_b.state.read_text())["token"],
        }
        web = {
            "admin": _login(server, "alice", ADMIN_PASSWORD),
            "reader": _login(server, "rita", READER_PASSWORD),
            "disabled_user": _login(server, "dora", DORA_PASSWORD),
            "ended": _login(server, "rita", READER_PASSWORD),
        }
        users.disable_user(instance, "dora", "test")
        ended = web["ended"]
        with _client(server) as client:
            client.cookies.set("ams_session", ended.cookie)
            assert client.post("/logout", data={"csrf_token": ended.csrf}).status_code == 303
        pools = {
            "revoked": Pool(revoked),
            "agent": Pool(device()),
            "other_agent": Pool(device()),
            "disabled": Pool(device(disabled=True)),
        }
        return World(server, instance, ids, tokens, pools, web, passwords)
    except BaseException:
        server.stop()
        raise


# --- sending one cell -------------------------------------------------------------------------


def _path(template: str, call: Call, ids: dict[str, str]) -> str:
    def fill(match: re.Match[str]) -> str:
        name = match.group(1).split(":")[0]
        value = ids[call.params.get(name, name)] if call.params.get(name, name) in ids else call.params[name]
        return quote(value, safe="=,")

    return re.sub(r"\{([^}]+)\}", fill, template)


def _api_credential(world: World, row: str, column: str) -> str | None:
    """The bearer token a REST cell sends (None: no header)."""
    agent_route = row.split(" ", 1)[1].startswith("/api/v1/agent/")
    if column == "none":
        return None
    if column == "malformed":
        return "not-a-token"
    if column in ("reader", "admin") or (agent_route and column in ("agent", "other_agent")):
        return world.tokens[column]
    return world.pools[column].take()


def _send_api(world: World, row: str, column: str, client: httpx.Client) -> httpx.Response:
    method, template = row.split(" ", 1)
    call = CALLS.get(("api", row), Call())
    token = _api_credential(world, row, column)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.request(
        method,
        _path(template, call, world.ids),
        headers=headers,
        json=_resolve(call.json, world.ids),
        content=call.content,
    )


def _resolve(value: Any, ids: dict[str, str]) -> Any:
    """A body whose "$name" strings are World.ids values."""
    if isinstance(value, str) and value.startswith("$"):
        return ids[value[1:]]
    if isinstance(value, dict):
        return {k: _resolve(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, ids) for v in value]
    return value


def _send_aws(world: World, operation: str, column: str, client: httpx.Client, path: str) -> httpx.Response:
    body = json.dumps(_resolve(CALLS.get(("aws", operation), Call(json={})).json, world.ids)).encode()
    headers = {
        "X-Amz-Target": f"DirectoryService_20150416.{operation}",
        "Content-Type": "application/x-amz-json-1.1",
    }
    if column == "malformed":
        headers["Authorization"] = "AWS4-HMAC-SHA256 Credential=not-a-credential"
    elif column != "none":
        token = world.tokens[column] if column in ("reader", "admin") else world.pools[column].take()
        key_id, _, secret = token.partition(".")
        request = AWSRequest(method="POST", url=str(client.base_url.join(path)), data=body, headers=headers)
        SigV4Auth(Credentials(key_id, secret), "ds", "us-east-1").add_auth(request)
        headers = dict(request.headers.items())
    return client.post(path, content=body, headers=headers)


def _send_web(world: World, row: str, column: str, client: httpx.Client) -> httpx.Response:
    method, template = row.split(" ", 1)
    call = CALLS.get(("web", row), Call())
    session: WebSession | None = None
    if column in ("reader", "admin", "no_csrf", "forged_csrf", "ended", "disabled_user"):
        owner = "admin" if column in ("no_csrf", "forged_csrf") else column
        session = world.web[owner]
        if row == "POST /logout" and owner in ("reader", "admin"):
            # Logging out ends the session: this cell's own, so the others keep theirs.
            name, password = ("alice", ADMIN_PASSWORD) if owner == "admin" else ("rita", READER_PASSWORD)
            session = _login(world.server, name, password)
        client.cookies.set("ams_session", session.cookie)
    elif column == "bad_cookie":
        client.cookies.set("ams_session", "not-a-session-" + "x" * 30)
    elif column == "api_key":
        client.headers["Authorization"] = f"Bearer {world.tokens['admin']}"
    path = _path(template, call, world.ids)
    if method == "GET":
        return client.get(path)
    form = {k: str(_resolve(v, world.ids)) for k, v in (call.form or {}).items()}
    if row == "POST /login":
        # The login form's token is keyed to this browser's pre-login cookie.
        form["csrf_token"] = _csrf_of(client.get("/login").text)
    elif session is not None:
        form["csrf_token"] = session.csrf
    if column == "no_csrf":
        form.pop("csrf_token", None)
    elif column == "forged_csrf":
        form["csrf_token"] = "9999999999." + "0" * 64
    return client.post(path, data=form, files=call.files)


# --- the tests --------------------------------------------------------------------------------


def _route_rows(instance: Instance) -> set[tuple[str, str]]:
    """Every route of the served application, as the table names it."""
    return _route_rows_of(create_app(instance))


def _route_rows_of(app: Any) -> set[tuple[str, str]]:
    rows: set[tuple[str, str]] = set()
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        endpoint = getattr(route, "endpoint", None)
        module = getattr(endpoint, "__module__", "") or ""
        if isinstance(route, Mount):
            surface = "web" if route.path == "/static" else "api"
            rows.add((surface, f"GET {route.path}/{{path}}"))
            continue
        surface = (
            "web" if module.startswith("ams.web") else "aws" if module.startswith("ams.api.aws_ds") else "api"
        )
        for method in sorted(getattr(route, "methods", None) or ()):
            rows.add((surface, f"{method} {context.path}"))
    return rows


# The AWS endpoint's paths: each answers every operation (the rows below say how).
AWS_PATHS = ("POST /aws/ds", "POST /aws/ds/", "POST /")


def test_every_route_has_its_row(world: World) -> None:
    routes = _route_rows(world.instance)
    aws_paths = {row for surface, row in routes if surface == "aws"}
    assert aws_paths == set(AWS_PATHS), "the AWS endpoint's paths changed: update AWS_PATHS and the rows"
    wanted = {r for r in routes if r[0] != "aws"} | {("aws", op) for op in OPERATIONS}
    wanted |= {("aws", f"DescribeDirectories via {path}") for path in AWS_PATHS}
    missing = sorted(wanted - MATRIX.keys())
    stale = sorted(MATRIX.keys() - wanted)
    assert not missing, f"routes without a row in MATRIX (decide who may call them): {missing}"
    assert not stale, f"rows in MATRIX for routes that no longer exist: {stale}"
    for (surface, row), statuses in MATRIX.items():
        assert len(statuses) == len(COLUMNS[surface]), (surface, row)


def test_a_route_without_a_row_is_caught(world: World) -> None:
    """The rule's positive control: a route added to the application is missing from MATRIX."""
    app = create_app(world.instance)
    app.add_api_route("/api/v1/unheard-of", lambda: {}, methods=["GET"])
    found = {r for r in _route_rows_of(app) if r[0] != "aws"} - MATRIX.keys()
    assert found == {("api", "GET /api/v1/unheard-of")}


CELLS = [
    pytest.param(surface, row, column, expected, id=f"{surface} {row}-{column}")
    for (surface, row), statuses in MATRIX.items()
    for column, expected in zip(COLUMNS[surface], statuses, strict=True)
]

# The cells whose answer holds device A's password: the password reads of readers and admins.
PASSWORD_READS = {
    ("api", "GET /api/v1/devices/{device}/password", "reader"),
    ("api", "GET /api/v1/devices/{device}/password", "admin"),
    ("web", "POST /devices/{ref}/password", "reader"),
    ("web", "POST /devices/{ref}/password", "admin"),
}
_DISCOVER = os.environ.get("AMS_AUTHZ_DISCOVER")


@dataclass(frozen=True)
class Answer:
    observed: int | str
    body: str


# Rows run one at a time before the others: a backup holds the backup lock (a second one
# started beside it would be refused for that, not for who asked).
SERIAL = {("api", "POST /api/v1/backups"), ("web", "POST /database/backup")}
WORKERS = 4


def _run_cell(world: World, surface: str, row: str, column: str) -> Answer:
    with world.address_lock:
        address = next(world.addresses)
    with _client(world.server, address) as client:
        if surface == "api":
            answer = _send_api(world, row, column, client)
        elif surface == "web":
            answer = _send_web(world, row, column, client)
        else:
            operation, _, path = row.partition(" via ")
            answer = _send_aws(world, operation, column, client, path.removeprefix("POST ") or "/aws/ds")
    observed: int | str = answer.status_code
    if observed == 303 and answer.headers.get("location", "").startswith("/login?next="):
        observed = LOGIN
    body = answer.content.decode("utf-8", "replace")
    # Generated passwords hold & < > and quotes: the console's pages escape them.
    return Answer(observed, html.unescape(body) if surface == "web" else body)


@pytest.fixture(scope="module")
def answers(world: World) -> dict[tuple[str, str, str], Answer]:
    """Every cell, sent once: the serial rows first, then the others on a few threads."""
    cells = [(surface, row, column) for surface, row, column, _expected in (p.values for p in CELLS)]
    first = [c for c in cells if c[:2] in SERIAL]
    rest = [c for c in cells if c[:2] not in SERIAL]
    done = {c: _run_cell(world, *c) for c in first}
    with ThreadPoolExecutor(WORKERS) as pool:
        done.update(zip(rest, pool.map(lambda c: _run_cell(world, *c), rest), strict=True))
    if _DISCOVER:
        with open(_DISCOVER, "w") as out:
            for cell, answer in done.items():
                out.write(json.dumps([*cell, answer.observed]) + "\n")
    return done


@pytest.mark.parametrize(("surface", "row", "column", "expected"), CELLS)
def test_cell(
    world: World,
    answers: dict[tuple[str, str, str], Answer],
    surface: str,
    row: str,
    column: str,
    expected: int | str,
) -> None:
    answer = answers[(surface, row, column)]
    assert answer.observed == expected, answer.body[:300]
    assert "Traceback" not in answer.body
    if isinstance(expected, int) and expected >= 400 and surface != "web":
        # A refusal in the documented shape: REST {"error", "message"}, AWS {"__type", "Message"}.
        shape = {"api": {"error", "message"}, "aws": {"__type", "Message"}}[surface]
        assert set(json.loads(answer.body)) == shape, answer.body[:300]
    current = world.passwords_of_a[-1]
    for password in world.passwords_of_a:
        shown = (surface, row, column) in PASSWORD_READS and password == current
        assert (password in answer.body) == shown, (
            f"device A's password {'missing from' if shown else 'in'} the body"
        )
    for name in ("agent", "other_agent", "admin", "reader"):
        assert world.tokens[name] not in answer.body, f"the {name} token is in the body"
    world.passed += 1


def test_another_device_token_never_reaches_a_password(world: World) -> None:
    """Device B's token, at every door to device A's password: refused, and nothing of A's
    password in any answer; B cannot undo A's current update either."""
    a, other = world.ids["device"], world.tokens["other_agent"]
    current_request = _request_ids(world.server.home, a)[-1]
    with _client(world.server, next(world.addresses)) as client:
        client.headers["Authorization"] = f"Bearer {other}"
        answers = [
            client.get(f"/api/v1/devices/{a}/password"),
            client.get(f"/api/v1/devices/{a}/password", params={"history": "true"}),
            client.get("/api/v1/devices/host-a/password"),
            client.get(f"/api/v1/devices/{a}"),
        ]
        assert [r.status_code for r in answers] == [401, 401, 401, 401]
        advice = client.get("/api/v1/agent/password", params={"version": "1"})
        assert advice.status_code == 200 and a not in advice.text
        undo = client.delete(f"/api/v1/agent/password/{current_request}")
        assert undo.status_code == 404, undo.text
        answers += [advice, undo]
    for answer in answers:
        for password in world.passwords_of_a:
            assert password not in answer.text
    with _client(world.server) as client:
        read = client.get(
            f"/api/v1/devices/{a}/password", headers={"Authorization": f"Bearer {world.tokens['admin']}"}
        )
    assert read.json()["password"] == world.passwords_of_a[-1] and read.json()["version"] == 2
