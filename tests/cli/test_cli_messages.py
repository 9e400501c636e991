"""What `ams` says: PFX files without a password, prompts, identifiers, snapshot limits
(issue 17, items 9, 11 and 12)."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import shutil
import subprocess
from pathlib import Path

import pytest

from ams.errors import BadInput, WeakPassword
from ams.instance import Instance
from conftest import AMS, run_ams

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _openssl_pfx(folder: Path, name: str = "empty") -> tuple[Path, str]:
    """A PFX made by the real `openssl pkcs12 -export -passout pass:` (no password), and the
    certificate's thumbprint."""
    key, cert, pfx = folder / f"{name}.key", folder / f"{name}.crt", folder / f"{name}.pfx"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert)]
        + ["-days", "30", "-subj", f"/CN={name}"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["openssl", "pkcs12", "-export", "-in", str(cert), "-inkey", str(key), "-out", str(pfx)]
        + ["-passout", "pass:"],
        check=True,
        capture_output=True,
    )
    der = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-outform", "der"], check=True, capture_output=True
    ).stdout
    return pfx, hashlib.sha256(der).hexdigest()


def _on_a_terminal(args: list[str], answers: list[str], timeout: float = 60) -> tuple[int, str]:
    """Run `ams` with a terminal of its own (a pseudo-terminal), typing each answer after each
    prompt (a line ending in ": "); return the exit status and everything it showed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMS_")}
    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal is its controlling terminal, as at a login
        try:
            os.execve(str(AMS), [str(AMS), *args], env)  # noqa: S606 - argv, no shell
        finally:
            os._exit(127)
    shown = b""
    pending = list(answers)
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                raise AssertionError(f"ams waited for input nobody expected: {shown!r}")
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
            if pending and shown.rstrip().endswith(b":"):
                os.write(fd, pending.pop(0).encode() + b"\r")
                shown += b"\n"
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


@needs_openssl
def test_a_pfx_without_a_password_imports(instance: Instance, tmp_path: Path) -> None:
    home = instance.home.root
    pfx, thumbprint = _openssl_pfx(tmp_path)

    # An empty first line is the empty password; no line at all is still refused.
    nothing = run_ams(
        "certs", "import", str(pfx), "--scope", "agent", "--password-stdin", home=home, input=""
    )
    assert nothing.returncode == BadInput.exit_status and "empty line" in nothing.stderr
    imported = run_ams(
        "certs", "import", str(pfx), "--scope", "agent", "--password-stdin", "--json", home=home, input="\n"
    )
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["thumbprint"] == thumbprint

    # At the prompt: "PFX password", and Enter is the empty password.
    other, other_thumbprint = _openssl_pfx(tmp_path, "typed")
    status, shown = _on_a_terminal(
        ["certs", "import", str(other), "--scope", "agent", "--home", str(home)], [""]
    )
    assert "PFX password (Enter for none): " in shown and "Pfx" not in shown
    assert status == 0, shown
    assert other_thumbprint in shown

    # Export still demands a strong password, typed twice at the same prompt.
    out = tmp_path / "out.pfx"
    status, shown = _on_a_terminal(
        ["certs", "export", thumbprint[:16], "--out", str(out), "--home", str(home)], [""]
    )
    assert "PFX password: " in shown and "Pfx" not in shown
    assert status == BadInput.exit_status and not out.exists()
    weak = run_ams(
        "certs", "export", thumbprint[:16], "--out", str(out), "--password-stdin", home=home, input="\n"
    )
    assert weak.returncode in (BadInput.exit_status, WeakPassword.exit_status) and not out.exists()


@needs_openssl
def test_a_prefix_too_short_says_so(instance: Instance, tmp_path: Path) -> None:
    home = instance.home.root
    pfx, thumbprint = _openssl_pfx(tmp_path)
    assert (
        run_ams(
            "certs", "import", str(pfx), "--scope", "agent", "--password-stdin", home=home, input="\n"
        ).returncode
        == 0
    )

    short = run_ams("certs", "activate", thumbprint[:4], home=home)
    assert short.returncode == BadInput.exit_status
    assert "too short" in short.stderr and "at least 8" in short.stderr
    assert short.stderr.count("\n") == 1
    absent = "0" * 4 if not thumbprint.startswith("0000") else "ffff"
    missing = run_ams("certs", "activate", absent, home=home)
    assert missing.returncode == 13 and "no certificate" in missing.stderr
    assert run_ams("certs", "activate", thumbprint[:8], home=home).returncode == 0


def test_snapshot_limits_of_an_ad_connector_say_they_do_not_apply(instance: Instance) -> None:
    home = instance.home.root
    made = run_ams("directory", "create", "corp.example.com", "--type", "ADConnector", "--json", home=home)
    directory_id = json.loads(made.stdout)["id"]
    limits = run_ams("snapshot", "limits", directory_id, home=home)
    assert limits.returncode == 0, limits.stderr
    assert "do not apply" in limits.stdout and "AD Connector" in limits.stdout
    assert "room for more" not in limits.stdout and "0 of 5" not in limits.stdout
    as_json = json.loads(run_ams("snapshot", "limits", directory_id, "--json", home=home).stdout)
    assert as_json["snapshots_supported"] is False and as_json["unsupported_reason"]

    managed = json.loads(run_ams("directory", "create", "ad.example.com", "--json", home=home).stdout)["id"]
    normal = run_ams("snapshot", "limits", managed, home=home)
    assert "0 of 5 manual snapshots (room for more)" in normal.stdout
