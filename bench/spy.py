"""Where a benchmark's server spends its CPU: py-spy samples of ``ams serve`` and its workers.

``--profile DIR`` on the ``fleet`` and ``read`` benchmarks records the server's processes
with py-spy (``pip install -c constraints.txt -e '.[profile]'``) while the timed rounds run
(idle threads are not sampled; ``--nonblocking``: the server is not paused to be sampled,
so the figures are not slowed) and writes ``DIR/NAME.txt`` (py-spy's collapsed stacks) and
``DIR/NAME.summary``: the share of samples by cost centre (the package of the innermost
Python frame: a sample in ``sqlite3``'s C code shows as the SQLAlchemy frame that called
it) and the busiest functions. ``python -m bench.spy FILE.txt`` summarises a recording.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

__all__ = ["profiled", "summarize"]

# (cost centre, pattern on the innermost frame's file, as py-spy names it: relative to its
# sys.path entry, "ams/vault/passwords.py", "sqlalchemy/orm/session.py", "threading.py"):
# the first that matches names it.
CENTRES = [
    ("RSA and AES (ams.crypto, cryptography)", r"(^|/)(ams/crypto|cryptography)/"),
    ("SQLite executing (sqlite3, under SQLAlchemy's cursor)", r"(^|/)sqlalchemy/engine/default\.py$|sqlite3"),
    ("SQLAlchemy (ORM, Core, pool)", r"(^|/)sqlalchemy/"),
    ("the vault, audit, db (ams)", r"(^|/)ams/(vault|audit|security|db)/|(^|/)ams/[a-z_]+\.py$"),
    ("the API's own code (ams.api)", r"(^|/)ams/api/"),
    ("pydantic", r"(^|/)pydantic"),
    ("FastAPI", r"(^|/)fastapi/"),
    ("Starlette", r"(^|/)starlette/"),
    ("uvicorn and h11 (HTTP)", r"(^|/)(uvicorn|h11|httptools)/"),
    (
        "asyncio, anyio, threads (hand-offs)",
        r"(^|/)(asyncio|anyio|concurrent)/|^threading\.py$|^selectors\.py$",
    ),
    ("logging", r"(^|/)logging/"),
    ("json", r"(^|/)json/"),
    ("prometheus_client (metrics)", r"(^|/)prometheus_client/"),
]
# A thread waiting for work is not CPU spent on requests (py-spy --nonblocking cannot tell
# idle threads itself): samples whose innermost frame is one of these are left out.
IDLE = {
    "Condition.wait",
    "Event.wait",
    "EpollSelector.select",
    "Thread._wait_for_tstate_lock",
    "Queue.get",
    "SimpleQueue.get",
}
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _tool() -> str:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit("--profile needs py-spy: pip install -c constraints.txt -e '.[profile]'")
    return found


@contextlib.contextmanager
def profiled(pid: int, out: Path, rate: int = 200) -> Iterator[None]:
    """Sample ``pid`` and its subprocesses while inside; then write ``out`` and its summary."""
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [_tool(), "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--rate", str(rate)]
        + ["--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    if out.is_file():
        summary = summarize(out)
        out.with_suffix(".summary").write_text(summary)
        print(summary, flush=True)


def _leaf(stack: str) -> tuple[str, str]:
    match = _FRAME.match(stack.rsplit(";", 1)[-1].strip())
    return (match["func"], match["file"]) if match else (stack.rsplit(";", 1)[-1], "")


def summarize(path: Path, top: int = 25) -> str:
    """Shares of the samples by cost centre and by function (innermost frame)."""
    centres: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    total = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        func, file = _leaf(stack)
        if func in IDLE or ";" not in stack:
            idle += samples
            continue
        total += samples
        centre = next((name for name, pattern in CENTRES if re.search(pattern, file)), "other")
        centres[centre] += samples
        functions[f"{func} ({'/'.join(Path(file).parts[-2:])})"] += samples
    if not total:
        return f"{path.name}: no samples\n"
    lines = [
        f"{path.name}: {total} samples of work ({idle} of threads waiting left out)",
        "",
        "cost centre (innermost frame) | share",
        "---|---",
    ]
    lines += [f"{name} | {n / total:.1%}" for name, n in centres.most_common()]
    lines += ["", f"top {top} functions (innermost frame) | share", "---|---"]
    lines += [f"{name} | {n / total:.1%}" for name, n in functions.most_common(top)]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if not argv or any(arg in ("-h", "--help") for arg in argv):
        print("usage: python -m bench.spy FILE.txt [FILE.txt ...]  (py-spy's collapsed stacks)")
        return 0 if argv else 2
    for arg in argv:
        try:
            print(summarize(Path(arg)))
        except OSError as exc:
            print(f"cannot read {arg}: {exc.strerror}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
