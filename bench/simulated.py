"""A large instance built fast, and simulated agents rotating against a real ``ams serve``.

Used by the ``fleet``, ``read`` and ``expiry`` benchmarks. :func:`build` makes an instance
with one RSA-4096 certificate (generated, as in production) and N devices, each with a real
device token and a current password (version 1) encrypted to that certificate. The rows go
in with bulk INSERTs through the models' tables (SQLAlchemy Core, batches of 5,000), not
N registrations over HTTP: 100,000 devices take seconds instead of an hour. The blobs are
real: a few hundred distinct ones are encrypted and shared by the devices (an administrator's
read decrypts whichever the device holds; a rotation never looks at the previous blob).

:func:`rotate` is the agents' side: each agent checks in (``GET /api/v1/agent/password``),
is told to rotate, and reports its next password (``POST``) with a blob encrypted ahead,
outside the timing, by :func:`prepare`; every agent at once, asyncio over loopback, one
keep-alive connection per agent (a few lines of HTTP/1.1 on asyncio streams: _Connection).
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import statistics
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert, update

from ams import apikeys, crypto
from ams.apikeys import Role
from ams.crypto.blob import decrypt_password, encrypt_password
from ams.db.models.vault import Device, DevicePassword
from ams.home import Home
from ams.instance import Instance, create_instance, open_instance
from ams.vault import certificates, regkeys
from ams.vault.policy import get_policy
from bench.results import Figure, Goal

__all__ = [
    "Agent",
    "Fleet",
    "Peer",
    "RoundResult",
    "build",
    "make_blob",
    "measure_round",
    "prepare",
    "rotate",
    "throughput_figures",
]

RECOVERY = "Bench-Recovery-Lantern-4471"
SCOPE = "agent"
PATH = "/api/v1/agent/password"
BATCH = 5000
DISTINCT_BLOBS = 256


@dataclass
class Agent:
    device_id: str
    token: str
    version: int = 1
    blob: str = ""  # base64, of version + 1, made by prepare()


@dataclass
class Fleet:
    home: Home
    instance: Instance
    account: str
    device_ids: list[str]
    agents: list[Agent]
    admin_token: str
    certificate: certificates.CertificateInfo
    build_seconds: float = 0.0

    def refresh_certificate(self) -> None:
        active = certificates.active_certificate(self.instance, SCOPE)
        assert active is not None
        self.certificate = active

    def private_key_der(self) -> bytes:
        der = certificates.private_key_der(self.instance, self.certificate.thumbprint)
        assert der is not None
        return der


def make_blob(certificate_der: bytes, account: str, version: int) -> str:
    """What ams-agent sends: the new password's JSON, encrypted to the certificate, base64."""
    plaintext = json.dumps(
        {
            "account": account,
            "password": secrets.token_urlsafe(15),
            "created_at": "2026-01-01T00:00:00+00:00",
            "version": version,
        }
    ).encode()
    return base64.b64encode(encrypt_password(certificate_der, plaintext)).decode()


def build(root: Path, count: int, agents: int) -> Fleet:
    """An instance of ``count`` devices; the first ``agents`` of them are the simulated agents."""
    started = time.perf_counter()
    home = Home(root / "home")
    create_instance(home, recovery_password=RECOVERY, actor="bench")
    instance = open_instance(home)
    certificate = certificates.ensure_active(instance, SCOPE, "bench")  # RSA-4096
    key_id = regkeys.create(instance, "bench", "bench").key.split(".", 1)[0]
    admin = apikeys.create(instance, "bench-admin", Role.ADMIN, "bench")
    with instance.session() as session:
        policy = get_policy(session, SCOPE)
    blobs = [
        base64.b64decode(make_blob(certificate.certificate_der, policy.account, 1))
        for _ in range(DISTINCT_BLOBS)
    ]
    now = instance.clock.now()
    expires = now + timedelta(days=policy.max_age_days)
    device_ids = [f"dev_{i:016x}" for i in range(count)]
    fleet_agents: list[Agent] = []
    for start in range(0, count, BATCH):
        ids = device_ids[start : start + BATCH]
        secrets_ = [crypto.random_secret(32) for _ in ids]
        fleet_agents.extend(
            Agent(d, f"{d}.{s}") for d, s in zip(ids, secrets_, strict=True) if len(fleet_agents) < agents
        )
        device_rows = [
            {
                "id": d,
                "name": f"pc-{start + i:06d}",
                "scope": SCOPE,
                "registration_key_id": key_id,
                "token_hash": crypto.hash_token(s),
                "status": "active",
                "created_at": now,
                "approved_at": now,
                "current_version": 1,
                "force_rotation": False,
            }
            for i, (d, s) in enumerate(zip(ids, secrets_, strict=True))
        ]
        password_rows = [
            {
                "device_id": d,
                "version": 1,
                "account": policy.account,
                "blob": blobs[(start + i) % DISTINCT_BLOBS],
                "certificate_thumbprint": certificate.thumbprint,
                "request_id": f"req_bench{start + i:023x}",
                "effective_at": now,
                "expires_at": expires,
                "is_current": True,
                "answered_force": False,
                "created_at": now,
            }
            for i, d in enumerate(ids)
        ]
        with instance.transaction() as session:
            session.execute(insert(Device), device_rows)
            session.execute(insert(DevicePassword), password_rows)
    with instance.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
    return Fleet(
        home=home,
        instance=instance,
        account=policy.account,
        device_ids=device_ids,
        agents=fleet_agents,
        admin_token=admin.token,
        certificate=certificate,
        build_seconds=time.perf_counter() - started,
    )


def prepare(fleet: Fleet, agents: Sequence[Agent], *, force: bool = True) -> list[bytes]:
    """Untimed: each agent's next blob, encrypted to the active certificate, and (``force``)
    the agents' devices told to rotate (what ``ams device expire`` sets, without its audit
    rows). The raw blobs, for the peer to decrypt."""
    der = fleet.certificate.certificate_der
    for agent in agents:
        agent.blob = make_blob(der, fleet.account, agent.version + 1)
    if force:
        with fleet.instance.transaction() as session:
            session.execute(
                update(Device)
                .where(Device.id.in_([a.device_id for a in agents]))
                .values(force_rotation=True, forced_at=fleet.instance.clock.now())
                .execution_options(synchronize_session=False)
            )
    return [base64.b64decode(a.blob) for a in agents]


class _Connection:
    """One agent's kept-alive HTTP/1.1 connection (asyncio streams). The agents' requests are
    small and of a fixed shape, so a few lines of HTTP do: the agents share the cores with
    the server, and httpx's pool (which scans every connection for each request, quadratic
    in the agents: 200 agents spent more CPU than the server) starved it of them."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _exchange(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(head + body)
        await self.writer.drain()
        lines = (await self.reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        answer = await self.reader.readexactly(int(fields.get(b"content-length", b"0")))
        if fields.get(b"connection", b"").lower() == b"close":
            self.close()
        return status, answer

    async def request(
        self, method: str, target: str, token: str, retried: list[int], body: bytes = b""
    ) -> tuple[int, bytes]:
        """One request; sent again once on a new connection when the kept-alive one was
        closed under it (the server closes connections idle past its keep-alive timeout,
        and under this load one can wait that long). Both requests may be repeated: a
        check-in changes nothing, and a report of the current version with the same blob
        answers as the first."""
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {token}\r\n"
            + (f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n" if body else "")
            + "\r\n"
        ).encode()
        try:
            return await self._exchange(head, body)
        except (asyncio.IncompleteReadError, ConnectionError):
            retried.append(1)
            self.close()
            return await self._exchange(head, body)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _one(
    connection: _Connection, agent: Agent, account: str, latencies: list[float], retried: list[int]
) -> None:
    status, text = await connection.request("GET", f"{PATH}?version={agent.version}", agent.token, retried)
    if status != 200:
        raise RuntimeError(f"GET {PATH}: {status} {text[:300]!r}")
    advice = json.loads(text)
    version = agent.version + 1
    if not advice["rotate"] or advice["next_version"] != version:
        raise RuntimeError(f"expected a rotation to version {version}, the server answered {advice}")
    body = json.dumps({"account": account, "version": version, "blob": agent.blob}).encode()
    started = time.perf_counter()
    status, text = await connection.request("POST", PATH, agent.token, retried, body)
    latencies.append(time.perf_counter() - started)
    if status not in (200, 201):
        raise RuntimeError(f"POST {PATH}: {status} {text[:300]!r}")
    agent.version = version


async def _rotate(url: str, agents: Sequence[Agent], account: str) -> tuple[list[float], int]:
    latencies: list[float] = []
    retried: list[int] = []
    parsed = urllib.parse.urlsplit(url)
    assert parsed.hostname is not None and parsed.port is not None
    connections = [_Connection(parsed.hostname, parsed.port) for _ in agents]
    try:
        await asyncio.gather(
            *(_one(c, a, account, latencies, retried) for c, a in zip(connections, agents, strict=True))
        )
    finally:
        for connection in connections:
            connection.close()
    return latencies, len(retried)


def rotate(url: str, agents: Sequence[Agent], account: str) -> tuple[list[float], int]:
    """Every agent rotates once, all at the same time: each report's latency (seconds), and
    how many requests were sent again on a fresh connection."""
    return asyncio.run(_rotate(url, agents, account))


def p99(values: Sequence[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98] if len(values) > 1 else values[0]


def _decrypt_all(args: tuple[list[bytes], bytes]) -> int:
    blobs, key = args
    for raw in blobs:
        decrypt_password(raw, key)
    return len(blobs)


def _enough(blobs: Sequence[bytes], least: int) -> list[bytes]:
    """The blobs, repeated up to ``least`` of them: enough work to time without the timer's
    and the process pool's overheads counting."""
    out = list(blobs)
    while len(out) < least:
        out += blobs[: least - len(out)]
    return out


@dataclass
class Peer:
    """RSA-4096 decryptions as the server does them (``ams.crypto.blob.decrypt_password``,
    the loaded key kept), on the blobs of the round: per CPU-second on one core, and per
    second of wall time on all cores (one process per core)."""

    key_der: bytes
    cores: int
    pool: ProcessPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        self.pool = ProcessPoolExecutor(self.cores)
        list(self.pool.map(_decrypt_all, [([], self.key_der)] * self.cores))

    def per_cpu_second(self, blobs: Sequence[bytes]) -> float:
        blobs = _enough(blobs, 200)
        decrypt_password(blobs[0], self.key_der)  # a key object's first operation costs more
        started = time.thread_time()
        for raw in blobs:
            decrypt_password(raw, self.key_der)
        return len(blobs) / (time.thread_time() - started)

    def per_second_all_cores(self, blobs: Sequence[bytes]) -> float:
        blobs = _enough(blobs, 200 * self.cores)
        chunks = [list(blobs[i :: self.cores]) for i in range(self.cores)]
        list(self.pool.map(_decrypt_all, [(c[:1], self.key_der) for c in chunks]))  # warm each
        started = time.perf_counter()
        done = sum(self.pool.map(_decrypt_all, [(c, self.key_der) for c in chunks]))
        return done / (time.perf_counter() - started)

    def close(self) -> None:
        self.pool.shutdown()


@dataclass
class RoundResult:
    rotations_per_cpu_second: float  # the server's CPU, all its processes
    rotations_per_second: float  # wall time, as the agents see it
    report_p99_ms: float
    decryptions_per_cpu_second: float  # the peer, one core
    decryptions_per_second: float  # the peer, all cores
    retried: int = 0  # requests sent again after a kept-alive connection was closed


def measure_round(
    fleet: Fleet,
    server_cpu: Callable[[], float],
    url: str,
    peer: Peer,
    agents: Sequence[Agent],
    *,
    force: bool,
) -> RoundResult:
    """One round: the blobs made (untimed), the peer decrypts them, then the agents rotate,
    then the peer decrypts them on one core again: its figure is the mean of the two (the
    machine's speed drifts, by a fifth within minutes on a shared one)."""
    blobs = prepare(fleet, agents, force=force)
    before = peer.per_cpu_second(blobs)
    per_wall = peer.per_second_all_cores(blobs)
    cpu, wall = server_cpu(), time.perf_counter()
    latencies, retried = rotate(url, agents, fleet.account)
    wall = time.perf_counter() - wall
    cpu = server_cpu() - cpu
    per_cpu = (before + peer.per_cpu_second(blobs)) / 2
    return RoundResult(
        len(agents) / cpu, len(agents) / wall, p99(latencies) * 1000, per_cpu, per_wall, retried
    )


def throughput_figures(label: str, rounds: Sequence[RoundResult], cores: int) -> list[Figure]:
    """The fleet's figures over its rounds: per server CPU-second (goal >= 0.70 of the peer),
    per second of wall time, and a report's p99 latency."""
    peer_cpu = statistics.median(r.decryptions_per_cpu_second for r in rounds)
    peer_wall = statistics.median(r.decryptions_per_second for r in rounds)
    per_cpu = [r.rotations_per_cpu_second for r in rounds]
    per_wall = [r.rotations_per_second for r in rounds]
    p99s = [r.report_p99_ms for r in rounds]
    # Each round against the peer measured around it: the machine's speed drifts between rounds.
    cpu_ratios = [r.rotations_per_cpu_second / r.decryptions_per_cpu_second for r in rounds]
    wall_ratios = [r.rotations_per_second / r.decryptions_per_second for r in rounds]
    return [
        Figure(
            f"rotations per server CPU-second, {label}",
            "/s",
            per_cpu,
            peer=peer_cpu,
            ratio=statistics.median(cpu_ratios),
            goal=Goal("ratio", ">=", 0.7),
            note="peer: RSA-4096 decryptions per CPU-second (decrypt_password, one core); ratio: the "
            "median of the rounds' ratios, each against the peer measured around its round",
        ),
        Figure(
            f"rotations per second (wall), {label}",
            "/s",
            per_wall,
            peer=peer_wall,
            ratio=statistics.median(wall_ratios),
            note=f"peer: RSA-4096 decryptions per second on all {cores} cores",
        ),
        Figure(
            f"report p99 latency, {label}",
            "ms",
            p99s,
            peer=1000 / peer_cpu,
            ratio=statistics.median(p99s) * peer_cpu / 1000,
            note="peer: one RSA-4096 decryption (CPU ms)",
        ),
    ]
