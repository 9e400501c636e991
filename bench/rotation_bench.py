"""The server side of password rotation, against the RSA decryption it must do (issue 3).

Issue 3's target: the server's rotation path is bound by RSA decryption, not by anything
else. A rotation, as ams-agent does it, is two requests: ``GET /api/v1/agent/password``
(the check-in, answered "rotate", here with reason ``forced``) and ``POST
/api/v1/agent/password`` with the new password's blob, which the server test-decrypts with
the active certificate's RSA-4096 key before it stores it. (Reading a password decrypts
again, but that is an administrator's read, not the rotation path.)

One run, one real SQLite instance with one generated RSA-4096 certificate, and interleaved
rounds (the order rotating each round; medians compared) of:

- **peer**: ``ams.crypto.blob.decrypt_password``, the code the server runs to open a blob,
  on the blobs the rotations send, single-threaded; and, to show how much of that call is
  the RSA operation, the RSA-OAEP decryption alone with a key object loaded once;
- **HTTP**: each device rotates once against a real ``ams serve`` on 127.0.0.1 (one client,
  one request at a time, keep-alive). The server's CPU time comes from /proc, so the time
  its threads spend waiting for a core on a busy machine is not counted as work;
- **service**: the same rotation by calling ``devices.authenticate`` (once per request),
  ``passwords.decide`` and ``passwords.store`` in this process, with the CPU time spent
  inside ``decrypt_password`` and inside sqlite3's statements measured apart.

Breakdown of the server's CPU per rotation: RSA (inside ``decrypt_password``, from the
service run), the vault and its database (the service functions minus RSA: SQLAlchemy,
sqlite3, audit rows), and the rest of the server's CPU (HTTP and JSON: uvicorn, Starlette,
FastAPI, pydantic, the access log, the thread hand-offs).

Parameters (environment or arguments): ``AMS_BENCH_ROTATIONS`` / ``--rotations N`` (default
80: devices, each rotating once per round and mode), ``AMS_BENCH_ROTATION_ROUNDS`` /
``--rounds N`` (default 5). ``--profile`` adds a cProfile of one service-level round.
The agent's side (encrypting blobs) and marking every device for rotation
(``ams device expire --all``) happen before each round, untimed.

Run: ``python -m bench rotation`` or ``python bench/rotation_bench.py --rotations 50``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import cProfile
import json
import os
import pstats
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from sqlalchemy import event

import ams.crypto.blob as blob_module
from ams.crypto.blob import decrypt_password, encrypt_password
from ams.home import Home
from ams.instance import Instance, create_instance, open_instance
from ams.vault import certificates, devices, passwords, regkeys
from ams.vault.policy import get_policy
from bench import results
from bench.server import Server

RECOVERY = "Bench-Recovery-Lantern-4471"
SCOPE = "agent"
PATH = "/api/v1/agent/password"


@dataclass
class BenchDevice:
    token: str
    version: int | None = None
    blob: str = ""  # base64, of version + 1

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class CpuMeter:
    """CPU seconds of this thread inside chosen functions (wrapped for the run, then restored)."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    depth: int = 0

    def wrap(self, owner: Any, name: str, stack: contextlib.ExitStack) -> None:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            self.depth += 1
            started = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[name] += time.thread_time() - started
                self.depth -= 1

        setattr(owner, name, timed)
        stack.callback(setattr, owner, name, original)

    def sql(self, instance: Instance, stack: contextlib.ExitStack) -> None:
        """sqlite3 executing statements (not SQLAlchemy around it), inside the wrapped functions only."""

        def before(conn: Any, *_args: Any) -> None:
            conn.info["bench_started"] = time.thread_time()

        def after(conn: Any, *_args: Any) -> None:
            started = conn.info.pop("bench_started", None)
            if started is not None and self.depth:
                self.seconds["sql"] += time.thread_time() - started
                self.seconds["statements"] += 1

        for name, listener in (("before_cursor_execute", before), ("after_cursor_execute", after)):
            event.listen(instance.engine, name, listener)
            stack.callback(event.remove, instance.engine, name, listener)


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


def setup(root: Path, count: int) -> tuple[Home, Instance, certificates.CertificateInfo, list[BenchDevice]]:
    home = Home(root / "home")
    create_instance(home, recovery_password=RECOVERY, actor="bench")
    instance = open_instance(home)
    certificate = certificates.ensure_active(instance, SCOPE, "bench")  # RSA-4096, as in production
    key = regkeys.create(instance, "bench", "bench").key
    fleet = [BenchDevice(devices.register(instance, key, f"pc-{i}").token) for i in range(count)]
    return home, instance, certificate, fleet


def prepare_round(instance: Instance, certificate_der: bytes, fleet: list[BenchDevice], account: str) -> None:
    """Untimed: the blob each device will report next, and every device told to rotate."""
    for device in fleet:
        device.blob = make_blob(certificate_der, account, (device.version or 0) + 1)
    if any(d.version is not None for d in fleet):
        devices.expire(instance, "bench", everything=True)


def _next(advice: dict[str, Any], device: BenchDevice) -> int:
    version = (device.version or 0) + 1
    if not advice["rotate"] or advice["next_version"] != version:
        raise RuntimeError(f"expected a rotation to version {version}, the server answered {advice}")
    return version


def rotate_http(client: httpx.Client, fleet: list[BenchDevice]) -> None:
    for device in fleet:
        params = {"version": "" if device.version is None else str(device.version)}
        got = client.get(PATH, params=params, headers=device.headers)
        if got.status_code != 200:
            raise RuntimeError(f"GET {PATH}: {got.status_code} {got.text}")
        advice = got.json()
        version = _next(advice, device)
        body = {"account": advice["policy"]["account"], "version": version, "blob": device.blob}
        stored = client.post(PATH, json=body, headers=device.headers)
        if stored.status_code != 201:
            raise RuntimeError(f"POST {PATH}: {stored.status_code} {stored.text}")
        device.version = version


def rotate_service(instance: Instance, fleet: list[BenchDevice]) -> None:
    """The same two requests without HTTP: what the routes call, in the same order."""
    for device in fleet:
        advice = passwords.decide(
            instance, devices.authenticate(instance, device.token), device.version
        ).to_dict()
        version = _next(advice, device)
        passwords.store(
            instance,
            devices.authenticate(instance, device.token),
            advice["policy"]["account"],
            version,
            device.blob,
        )
        device.version = version


def _cpu_and_wall(work: Callable[[], None]) -> tuple[float, float]:
    cpu, wall = time.thread_time(), time.perf_counter()
    work()
    return time.thread_time() - cpu, time.perf_counter() - wall


def peer(blobs: list[bytes], private_key_der: bytes) -> tuple[float, float]:
    """(CPU, wall) seconds of ``decrypt_password`` for every blob: AMS's own code path."""

    def work() -> None:
        for raw in blobs:
            decrypt_password(raw, private_key_der)

    return _cpu_and_wall(work)


def peer_rsa_only(blobs: list[bytes], private_key_der: bytes) -> tuple[float, float]:
    """(CPU, wall) seconds of the RSA-OAEP unwrap of each blob's AES key alone, one key object.

    Only the bench touches the primitive outside ams.crypto, to show how much of
    ``decrypt_password`` is the RSA operation itself.
    """
    key = serialization.load_der_private_key(private_key_der, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    oaep = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    wrapped = []
    for raw in blobs:  # magic, version, thumbprint (4 + 1 + 32), u16 length, wrapped key
        length = int.from_bytes(raw[37:39], "big")
        wrapped.append(raw[39 : 39 + length])
    key.decrypt(wrapped[0], oaep)  # a key object's first private operation costs more (see the docs)

    def work() -> None:
        for item in wrapped:
            key.decrypt(item, oaep)

    return _cpu_and_wall(work)


def _profile(instance: Instance, certificate_der: bytes, fleet: list[BenchDevice], account: str) -> None:
    prepare_round(instance, certificate_der, fleet, account)
    profiler = cProfile.Profile()
    profiler.enable()
    rotate_service(instance, fleet)
    profiler.disable()
    print("cProfile of one service-level round (top 40 by cumulative time):")
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative").print_stats(40)


@contextlib.contextmanager
def _opened(
    root: Path, count: int
) -> Iterator[tuple[Home, Instance, certificates.CertificateInfo, list[BenchDevice]]]:
    home, instance, certificate, fleet = setup(root, count)
    try:
        yield home, instance, certificate, fleet
    finally:
        instance.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rotations", type=int, default=int(os.environ.get("AMS_BENCH_ROTATIONS", "0")))
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("AMS_BENCH_ROTATION_ROUNDS", "0")))
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one service-level round")
    results.add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    args.rotations = args.rotations or (10 if args.quick else 80)
    args.rounds = args.rounds or (2 if args.quick else 5)
    root = Path(tempfile.mkdtemp(prefix="ams-rotation-bench-"))
    try:
        t0 = time.perf_counter()
        with (
            _opened(root, args.rotations) as (home, instance, certificate, fleet),
            contextlib.ExitStack() as stack,
        ):
            with instance.session() as session:
                account = get_policy(session, SCOPE).account
            private_key_der = certificates.private_key_der(instance, certificate.thumbprint)
            assert private_key_der is not None
            der = certificate.certificate_der
            server = Server(home.root, root / "serve.log")
            stack.callback(server.stop)
            client = stack.enter_context(httpx.Client(base_url=server.url, timeout=60))
            print(
                f"instance with one RSA-4096 certificate, {args.rotations} devices and ams serve"
                f" in {time.perf_counter() - t0:.1f} s"
            )
            meter = CpuMeter()
            for owner, name in (
                (devices, "authenticate"),
                (passwords, "decide"),
                (passwords, "store"),
                (blob_module, "decrypt_password"),  # passwords calls it through the module
            ):
                meter.wrap(owner, name, stack)
            meter.sql(instance, stack)

            # Untimed: every device's first password (reason "new") over HTTP, which warms the
            # server, then one service round to warm this process.
            prepare_round(instance, der, fleet, account)
            rotate_http(client, fleet)
            prepare_round(instance, der, fleet, account)
            rotate_service(instance, fleet)
            idle_cpu = server.cpu_seconds()
            time.sleep(1.0)
            idle_cpu = server.cpu_seconds() - idle_cpu

            n = len(fleet)
            per: dict[str, list[float]] = defaultdict(list)  # milliseconds per rotation or decryption
            modes = ["peer", "http", "service"]
            for round_no in range(args.rounds):
                shift = round_no % len(modes)
                for mode in modes[shift:] + modes[:shift]:
                    prepare_round(instance, der, fleet, account)
                    if mode == "peer":
                        raws = [base64.b64decode(d.blob) for d in fleet]
                        cpu, wall = peer(raws, private_key_der)
                        per["peer_cpu"].append(cpu / n * 1000)
                        per["peer_wall"].append(wall / n * 1000)
                        cpu, wall = peer_rsa_only(raws, private_key_der)
                        per["rsa_only_cpu"].append(cpu / n * 1000)
                    elif mode == "http":
                        cpu, wall = server.cpu_seconds(), time.perf_counter()
                        rotate_http(client, fleet)
                        per["http_wall"].append((time.perf_counter() - wall) / n * 1000)
                        per["http_server_cpu"].append((server.cpu_seconds() - cpu) / n * 1000)
                    else:
                        meter.seconds.clear()
                        cpu, wall = _cpu_and_wall(lambda: rotate_service(instance, fleet))
                        s = meter.seconds
                        per["service_wall"].append(wall / n * 1000)
                        per["service_cpu"].append(cpu / n * 1000)
                        per["service_rsa"].append(s["decrypt_password"] / n * 1000)
                        per["service_auth"].append(s["authenticate"] / n * 1000)
                        per["service_decide"].append(s["decide"] / n * 1000)
                        per["service_store"].append((s["store"] - s["decrypt_password"]) / n * 1000)
                        per["service_sql"].append(s["sql"] / n * 1000)
                        per["statements"].append(s["statements"] / n)
            if args.profile:
                _profile(instance, der, fleet, account)

        m = {key: statistics.median(values) for key, values in per.items()}
        server_cpu = m["http_server_cpu"]
        rsa = m["service_rsa"]
        vault = m["service_auth"] + m["service_decide"] + m["service_store"]
        http = server_cpu - rsa - vault
        rows: list[tuple[str, str]] = [
            ("rounds (medians below) x rotations", f"{args.rounds} x {args.rotations}"),
            ("load average (1, 5 min)", " ".join(f"{x:.2f}" for x in os.getloadavg()[:2])),
            ("ams serve CPU while idle, per second", f"{idle_cpu * 1000:.0f} ms"),
            ("peer: decrypt_password, CPU ms (each round)", " ".join(f"{x:.2f}" for x in per["peer_cpu"])),
            (
                "peer: decrypt_password /s (CPU; wall)",
                f"{1000 / m['peer_cpu']:.0f}; {1000 / m['peer_wall']:.0f}",
            ),
            ("RSA-OAEP alone, key loaded once, /s (CPU)", f"{1000 / m['rsa_only_cpu']:.0f}"),
            (
                "HTTP: server CPU ms per rotation (each round)",
                " ".join(f"{x:.1f}" for x in per["http_server_cpu"]),
            ),
            ("HTTP: rotations /s per server CPU-second", f"{1000 / server_cpu:.1f}"),
            (
                "HTTP: rotations /s, one client (wall)",
                f"{1000 / m['http_wall']:.1f}  ({m['http_wall']:.0f} ms each)",
            ),
            (
                "service: rotations /s (CPU; wall)",
                f"{1000 / m['service_cpu']:.1f}; {1000 / m['service_wall']:.1f}",
            ),
            ("ratio rotations / decryptions (server CPU)", f"{m['peer_cpu'] / server_cpu:.2f}"),
            ("ratio rotations / decryptions (client wall)", f"{m['peer_wall'] / m['http_wall']:.2f}"),
            ("server CPU ms per rotation (GET + POST)", f"{server_cpu:.2f}"),
            ("  RSA: inside decrypt_password", f"{rsa:.2f}  {rsa / server_cpu:.0%}"),
            (
                "    the RSA operation itself (warm key) / the rest",
                f"{m['rsa_only_cpu']:.2f} / {rsa - m['rsa_only_cpu']:.2f}",
            ),
            ("  vault + database (service functions - RSA)", f"{vault:.2f}  {vault / server_cpu:.0%}"),
            (
                "    authenticate x2 / decide / store - RSA",
                f"{m['service_auth']:.2f} / {m['service_decide']:.2f} / {m['service_store']:.2f}",
            ),
            (
                "    of which sqlite3 executing statements",
                f"{m['service_sql']:.2f}  ({m['statements']:.0f} statements)",
            ),
            (
                "  HTTP/JSON (server CPU - service functions)",
                f"{http:.2f}  {http / server_cpu:.0%}" if http >= 0 else "not estimated (below 0)",
            ),
            ("RSA share of the service functions alone", f"{rsa / (rsa + vault):.0%}"),
        ]
        for key, value in rows:
            print(f"  {key:<50} {value}")
        rounds_rsa_share = [
            r / c * 100 for r, c in zip(per["service_rsa"], per["http_server_cpu"], strict=True)
        ]
        figures = [
            results.Figure(
                "rotations per server CPU-second, one client",
                "/s",
                [1000 / x for x in per["http_server_cpu"]],
                peer=1000 / m["peer_cpu"],
                ratio=m["peer_cpu"] / server_cpu,
                goal=results.Goal("ratio", ">=", 0.7),
                note="peer: decrypt_password per CPU-second, on the blobs the rotations send",
            ),
            results.Figure(
                "server CPU per rotation (GET + POST)",
                "ms",
                per["http_server_cpu"],
                peer=m["peer_cpu"],
                ratio=server_cpu / m["peer_cpu"],
                note="peer: one decrypt_password (CPU ms); ratio: server CPU / peer",
            ),
            results.Figure(
                "RSA share of the server's CPU per rotation",
                "%",
                rounds_rsa_share,
                goal=results.Goal("median", ">=", 60),
                note="issue 3: bound by RSA (>= 60%); RSA measured inside decrypt_password, service level",
            ),
            results.Figure(
                "  vault + database per rotation (service, without RSA)",
                "ms",
                [
                    a + d + st
                    for a, d, st in zip(
                        per["service_auth"], per["service_decide"], per["service_store"], strict=True
                    )
                ],
                note=(
                    f"{m['statements']:.0f} statements a rotation through SQLAlchemy; "
                    "the hot path's own run on the driver, uncounted"
                ),
            ),
            results.Figure(
                "rotation wall time, one client (GET + POST)",
                "ms",
                per["http_wall"],
                peer=m["peer_wall"],
                ratio=m["http_wall"] / m["peer_wall"],
                note="peer: one decrypt_password (wall ms)",
            ),
        ]
        sizes = {"rotations": args.rotations, "rounds": args.rounds, "quick": args.quick}
        if http >= 0:
            figures.insert(
                -1,
                results.Figure(
                    "  HTTP/JSON per rotation (server CPU - service functions)",
                    "ms",
                    [http],
                    note="from the medians",
                ),
            )
        else:
            # The service functions called here (the device authenticated apart, each report
            # stored on its own, as the routes did before issue 12's hot path) cost more than
            # the server's whole rotation: the difference estimates nothing.
            print("  HTTP/JSON: not estimated (the service functions alone cost more than the server)")
        results.write("rotation", sizes, figures, args.results)
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
