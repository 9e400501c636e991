"""Offsite copies: upload and download of a backup against ``aws s3 cp``, and peak memory.

Issue 16's targets: on an instance of 100,000 devices with 10 passwords each, the copy of
its backup to an S3 server and the download of it back each within 1.1x the time of ``aws
s3 cp`` of the same file to and from the same server, measured in the same run; peak
memory of the upload (``ams backup target sync``) and of a restore from the target
(``ams backup restore s3://…``) at most 200 MB whatever the archive's size.

The server is moto's standalone server (``python -m moto.server``) on loopback, its own
process; both sides talk to it over HTTP. Each side runs as a child process, alternating,
``--rounds`` times after one untimed run each; the medians are compared. The peer
downloads in one GET (its ``multipart_threshold`` set above the archive's size): its
default, ranged GETs of 8 MiB ten at a time, is some forty times slower against moto,
which reads the whole object for each range. Peak memory is the child's VmHWM, polled
from /proc. Sizes: ``--devices`` (default 100000, quick 2000), ``--history`` (default 10,
quick 2), ``--rounds`` (default 3, quick 1).

Run: ``python -m bench offsite [--quick]``; writes ``bench/results/offsite.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

AMS = Path(sys.executable).parent / "ams"
RECOVERY = "Bench-Recovery-Lantern-4471"
BUCKET = "ams-bench"
_KEYS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}


def _env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("AMS_")}, **_KEYS}


def _hwm_mb(pid: int) -> float:
    """The process's peak RSS so far (VmHWM: its own address space since exec)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _child(
    argv: list[str], stdin: str | None = None, extra_env: dict[str, str] | None = None
) -> tuple[float, float]:
    """Seconds and peak RSS in MB of one child process, which must succeed.

    Peak RSS is polled from /proc (VmHWM) until the child exits: ``ru_maxrss`` of a child
    starts from its parent's RSS at fork, which would measure this process instead. The
    dirty pages of what ran before (a gigabyte downloaded or stored by moto) are written out
    first, untimed, so that neither side pays for the other's writes.
    """
    os.sync()
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**_env(), **(extra_env or {})},
    )
    assert proc.stdin is not None
    if stdin:
        proc.stdin.write(stdin.encode())
    proc.stdin.close()
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, _hwm_mb(proc.pid))
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    err = proc.stderr.read() if proc.stderr else b""
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv[:4])} failed ({proc.returncode}): {err.decode()[-400:]}")
    return seconds, peak


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = _free_port()
    with open(folder / "moto.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(endpoint + "/moto-api/", timeout=1)
            return proc, endpoint
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("the moto server did not start")


def _compile_ams() -> None:
    """Byte-compile AMS's modules, as installing a wheel does: an editable install run with
    PYTHONDONTWRITEBYTECODE would compile every module at each start, which ``aws`` (an
    installed package) never does."""
    import ams

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(ams.__file__).parent)], check=True)


def _forget_copies(home: Path) -> None:
    """So that the next ``target sync`` copies the backup again."""
    conn = sqlite3.connect(home / "data" / "ams.db")
    with conn:
        conn.execute("DELETE FROM offsite_copies")
    conn.close()


def run(devices: int, history: int, rounds: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    import boto3

    from bench.backup_bench import generate

    root = Path(tempfile.mkdtemp(prefix="ams-bench-offsite-"))
    _compile_ams()
    server, endpoint = _server(root)
    try:
        print(f"building an instance of {devices} devices x {history} passwords ...", flush=True)
        started = time.perf_counter()
        home = generate(root, devices, history).root
        s3 = boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in list(_KEYS.items())[:2]})
        s3.create_bucket(Bucket=BUCKET)
        made = subprocess.run(
            [str(AMS), "backup", "create", "--json", "--home", str(home)],
            env=_env(),
            capture_output=True,
            text=True,
            check=True,
        )
        import json

        archive = Path(json.loads(made.stdout)["path"])
        size = archive.stat().st_size
        subprocess.run(
            [str(AMS), "backup", "verify", str(archive), "--home", str(home)],
            env=_env(),
            capture_output=True,
            check=True,
        )
        subprocess.run(
            [
                str(AMS),
                "backup",
                "target",
                "add",
                "bench",
                "--s3",
                f"s3://{BUCKET}/ams/",
                "--endpoint-url",
                endpoint,
                "--home",
                str(home),
            ],
            env=_env(),
            capture_output=True,
            check=True,
        )
        print(f"  instance and its backup ready in {time.perf_counter() - started:.0f} s", flush=True)
        key = f"ams/{archive.name}"
        url = f"s3://{BUCKET}/{key}"
        ams_up: list[float] = []
        aws_up: list[float] = []
        ams_down: list[float] = []
        aws_down: list[float] = []
        up_rss: list[float] = []
        restore_rss: list[float] = []
        restore_s: list[float] = []
        aws = shutil.which("aws") or "aws"
        peer_config = root / "aws-one-get.config"
        peer_config.write_text(f"[default]\ns3 =\n  multipart_threshold = {size + 1}\n")
        one_get = {"AWS_CONFIG_FILE": str(peer_config)}
        fetcher = (
            "import sys, pathlib; from ams.backup.remote import fetch; "
            "fetch(sys.argv[1], pathlib.Path(sys.argv[2]), endpoint_url=sys.argv[3])"
        )
        for n in range(rounds + 1):  # round 0 is untimed
            _forget_copies(home)
            upload_ams = [str(AMS), "backup", "target", "sync", "bench", "--home", str(home)]
            upload_aws = [
                aws,
                "s3",
                "cp",
                str(archive),
                f"s3://{BUCKET}/peer.amsbak",
                "--endpoint-url",
                endpoint,
                "--only-show-errors",
            ]
            if n % 2:
                t_ams, rss = _child(upload_ams)
                t_aws, _ = _child(upload_aws)
            else:
                t_aws, _ = _child(upload_aws)
                t_ams, rss = _child(upload_ams)
            down = root / f"down-{n}"
            down.mkdir()
            fetch_ams = [sys.executable, "-c", fetcher, url, str(down), endpoint]
            # The peer downloads with one GET (multipart_threshold above the archive's size):
            # moto answers each of the ranged GETs of aws's default multipart download by
            # reading the whole object, some forty times slower than one GET here.
            fetch_aws = [
                aws,
                "s3",
                "cp",
                url,
                str(down / "peer.amsbak"),
                "--endpoint-url",
                endpoint,
                "--only-show-errors",
            ]
            if n % 2:
                t_ams_d, _ = _child(fetch_ams)
                t_aws_d, _ = _child(fetch_aws, extra_env=one_get)
            else:
                t_aws_d, _ = _child(fetch_aws, extra_env=one_get)
                t_ams_d, _ = _child(fetch_ams)
            shutil.rmtree(down)
            t_restore, rss_restore = _child(
                [
                    str(AMS),
                    "backup",
                    "restore",
                    url,
                    "--endpoint-url",
                    endpoint,
                    "--password-stdin",
                    "--home",
                    str(root / f"restored-{n}"),
                ],
                stdin=RECOVERY + "\n",
            )
            shutil.rmtree(root / f"restored-{n}")
            print(
                f"  round {n}{' (untimed)' if n == 0 else ''}: upload {t_ams:.1f} / {t_aws:.1f} s, "
                f"download {t_ams_d:.1f} / {t_aws_d:.1f} s, restore {t_restore:.1f} s (AMS / aws)",
                flush=True,
            )
            if n == 0:
                continue
            ams_up.append(t_ams)
            aws_up.append(t_aws)
            ams_down.append(t_ams_d)
            aws_down.append(t_aws_d)
            up_rss.append(rss)
            restore_rss.append(rss_restore)
            restore_s.append(t_restore)
        sizes = {
            "devices": devices,
            "history": history,
            "rounds": rounds,
            "archive_bytes": size,
        }
        up, peer_up = statistics.median(ams_up), statistics.median(aws_up)
        down_m, peer_down = statistics.median(ams_down), statistics.median(aws_down)
        figures = [
            _figure(
                "upload (ams backup target sync)",
                "s",
                ams_up,
                peer_up,
                up / peer_up,
                "ratio <= 1.1",
                "ratio = ams / aws s3 cp; the peer is `aws s3 cp FILE s3://…` to the same server",
            ),
            _figure(
                "download (the staging of verify/restore)",
                "s",
                ams_down,
                peer_down,
                down_m / peer_down,
                "ratio <= 1.1",
                "ratio = ams / aws s3 cp; the peer is `aws s3 cp s3://… FILE` in one GET "
                "(its multipart_threshold above the archive's size)",
            ),
            _figure("peak RSS, upload", "MB", up_rss, None, None, "max <= 200", "the child's VmHWM (/proc)"),
            _figure(
                "peak RSS, restore from the target",
                "MB",
                restore_rss,
                None,
                None,
                "max <= 200",
                "ams backup restore s3://… into a new home; the child's VmHWM",
            ),
            _figure(
                "restore from the target (download, checks, restore)", "s", restore_s, None, None, None, ""
            ),
        ]
        return sizes, figures
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        shutil.rmtree(root, ignore_errors=True)


_OPS = {"<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b}


def _figure(
    name: str,
    unit: str,
    values: list[float],
    peer: float | None,
    ratio: float | None,
    goal: str | None,
    note: str,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name,
        "unit": unit,
        "min": round(min(values), 4),
        "median": round(statistics.median(values), 4),
        "max": round(max(values), 4),
        "peer": None if peer is None else round(peer, 4),
        "ratio": None if ratio is None else round(ratio, 4),
        "goal": goal,
        "met": None,
        "note": note,
    }
    if goal is not None:
        field, op, value = goal.split()
        out["met"] = _OPS[op](out[field], float(value))
    return out


def _write(name: str, sizes: dict[str, Any], figures: list[dict[str, Any]], folder: Path) -> None:
    import json

    from bench import results

    document = {"benchmark": name, "machine": results.machine(), "sizes": sizes, "figures": figures}
    results.validate(document)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    for f in figures:
        goal = "" if f["goal"] is None else f"  goal {f['goal']}: {'met' if f['met'] else 'NOT met'}"
        ratio = "" if f["ratio"] is None else f"  peer {f['peer']}  ratio {f['ratio']}"
        print(f"  {f['name']:<52} {f['median']} {f['unit']} ({f['min']}-{f['max']}){ratio}{goal}")
    print(f"results: {path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench offsite", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="a small size, under a minute: checks that it runs"
    )
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--devices", type=int, default=None)
    parser.add_argument("--history", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    devices = args.devices or (2000 if args.quick else 100_000)
    history = args.history or (2 if args.quick else 10)
    rounds = args.rounds or (1 if args.quick else 3)
    sizes, figures = run(devices, history, rounds)
    _write("offsite", sizes, figures, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
