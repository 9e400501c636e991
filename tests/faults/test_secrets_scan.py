"""Issue 13, secrets: an end-to-end run with the service logging at debug level, then every
place a secret could leak to is searched for every secret the run made or typed.

The run: ``ams init`` (generated recovery password), a console user, an admin API key, a
registration key, two real ams-agents registering and rotating twice, password reads (CLI,
REST, console), a certificate export with a PFX password, wrong credentials of every kind
(their error messages are collected too), a backup, a restore into a new home with the
recovery password, ``ams security unlock`` there, and a console login.

Searched: the server's log, every CLI and agent output, the audit records of both homes,
/metrics, every HTTP response body, the exported PFX, and every file of both homes except
``keys/service.key`` (the service key itself, which is key material by design). Searched
for: each password and secret as typed, URL-, form-, JSON- and HTML-escaped, in hex and in
base64 at any alignment; key material (the master key, the service key, every private key
in PKCS#8 DER) raw, in hex and in base64 at any alignment (so a PEM body is found too).

A secret may appear only where it is shown on purpose (the output that creates it, a
password read); a positive control shows the scan finds what it looks for, both planted
(every form) and in those outputs.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx
import pytest

from ams.clock import SystemClock
from ams.home import Home
from ams.instance import open_instance
from ams.security.service_key import decode_service_key
from ams.vault import certificates
from conftest import Result, run_ams
from server import FileAgent, Server

CONSOLE_PASSWORD = "Violet-Harbour-Engine-58"
PFX_PASSWORD = "Lantern-Copper-Meadow-7731"
# What a user mistypes is a secret too (often one letter from the real one).
WRONG = {
    "wrong recovery password": "Wrong-Recovery-Orbit-9917",
    "wrong PFX password": "Wrong-Pfx-Harbour-2203",
    "wrong console password": "Wrong-Console-Engine-5848",
    "wrong API key secret": "WrongApiSecret0123456789abcdefXYZ_-9a8b7c6d5e",
    "wrong device token secret": "WrongDeviceSecret0123456789abcdefXYZ_-1a2b3c4d",
}


def _b64_windows(data: bytes, width: int) -> list[bytes]:
    """Base64 of ``width`` bytes of ``data`` at offsets 0, 1 and 2 (from its middle when it is
    long): one of them appears in any base64 text that holds ``data``, whatever bytes came
    before it."""
    start = max(0, len(data) // 2 - width) // 3 * 3
    out = []
    for shift in range(3):
        chunk = data[start + shift : start + shift + width]
        if len(chunk) == width:
            for encode in (base64.b64encode, base64.urlsafe_b64encode):
                out.append(encode(chunk))
    return out


def text_forms(secret: str) -> list[bytes]:
    raw = secret.encode()
    forms = {
        raw,
        quote(secret, safe="").encode(),
        quote_plus(secret).encode(),
        json.dumps(secret)[1:-1].encode(),
        html.escape(secret).encode(),
        raw.hex().encode(),
        *_b64_windows(raw, min(12, len(raw) - 2)),
    }
    return sorted(forms)


def key_forms(material: bytes) -> list[bytes]:
    width = 48 if len(material) >= 60 else len(material) - 2
    return sorted(
        {material, material.hex().encode(), material.hex().upper().encode(), *_b64_windows(material, width)}
    )


@dataclass
class Needle:
    name: str
    forms: list[bytes]


@dataclass
class Corpus:
    """Everything collected: source name -> bytes, and the secrets each may show on purpose."""

    sources: dict[str, bytes] = field(default_factory=dict)
    allowed: dict[str, set[str]] = field(default_factory=dict)

    def add(self, name: str, content: bytes | str, allowed: set[str] | None = None) -> None:
        if name in self.sources:
            name = f"{name} #{sum(1 for n in self.sources if n.startswith(name))}"
        self.sources[name] = content.encode() if isinstance(content, str) else content
        self.allowed[name] = allowed or set()

    def cli(self, label: str, result: Result, allowed: set[str] | None = None) -> Result:
        self.add(f"cli: {label}", result.stdout + result.stderr, allowed)
        return result

    def http(self, label: str, answer: httpx.Response, allowed: set[str] | None = None) -> httpx.Response:
        self.add(f"http: {label}", answer.content, allowed)
        return answer


_LINE_BREAKS = re.compile(rb"\r|\n|\\r|\\n")


def scan(corpus: Corpus, needles: list[Needle], *, honour_allowed: bool = True) -> list[tuple[str, str]]:
    """(source, secret) for every secret found where it may not be. Each source is searched
    as it is and with its line breaks (and JSON's escaped ones) taken out: base64 wrapped in
    lines, as in a PEM, is found too."""
    hits = []
    for source, content in corpus.sources.items():
        unwrapped = _LINE_BREAKS.sub(b"", content)
        for needle in needles:
            if honour_allowed and needle.name in corpus.allowed[source]:
                continue
            if any(form in content or form in unwrapped for form in needle.forms):
                hits.append((source, needle.name))
    return hits


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


# --- the run ----------------------------------------------------------------------------------


def _ok(result: Result) -> Result:
    assert result.returncode == 0, result.stderr
    return result


def _refused(result: Result) -> Result:
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    return result


_CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


@dataclass
class Run:
    corpus: Corpus
    secrets: dict[str, str]  # name -> a secret as text
    keys: dict[str, bytes]  # name -> key material
    homes: list[Path]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("secrets")
    home, restored = root / "home", root / "restored"
    corpus = Corpus()
    secrets: dict[str, str] = dict(WRONG)
    cli = corpus.cli

    made = cli(
        "init",
        _ok(run_ams("init", "--generate-recovery-password", "--json", home=home)),
        {"recovery password"},
    )
    secrets["recovery password"] = json.loads(made.stdout)["recovery_password"]
    cli(
        "user create",
        _ok(
            run_ams(
                "user",
                "create",
                "alice",
                "--role",
                "admin",
                "--password-stdin",
                home=home,
                input=CONSOLE_PASSWORD + "\n",
            )
        ),
    )
    secrets["console password"] = CONSOLE_PASSWORD
    key = json.loads(
        cli(
            "apikey create",
            _ok(run_ams("apikey", "create", "--name", "ops", "--role", "admin", "--json", home=home)),
            {"API key secret"},
        ).stdout
    )
    secrets["API key secret"] = key["secret"]
    regkey = json.loads(
        cli(
            "regkey create",
            _ok(run_ams("regkey", "create", "--name", "fleet", "--json", home=home)),
            {"registration key secret"},
        ).stdout
    )["key"]
    secrets["registration key secret"] = regkey.partition(".")[2]

    server = Server(home, env={"AMS_LOG_LEVEL": "debug"})
    try:
        _serve(server, root, corpus, secrets, key["token"], regkey)
    finally:
        server.stop()
    corpus.add("server log", server.log.read_bytes())
    # The service logged at debug level: why each failed authentication was refused.
    assert b" DEBUG ams.security: failed api_key authentication" in corpus.sources["server log"]

    # Backup, then restore into a new home with the recovery password, then unlock there.
    backup = json.loads(cli("backup create", _ok(run_ams("backup", "create", "--json", home=home))).stdout)
    cli(
        "backup restore",
        _ok(
            run_ams(
                "backup",
                "restore",
                backup["path"],
                "--password-stdin",
                "--json",
                home=restored,
                input=secrets["recovery password"] + "\n",
            )
        ),
    )
    wrong = run_ams(
        "backup",
        "restore",
        backup["path"],
        "--password-stdin",
        home=root / "elsewhere",
        input=WRONG["wrong recovery password"] + "\n",
    )
    cli("backup restore (wrong password)", _refused(wrong))
    (restored / "keys" / "service.key").unlink(missing_ok=True)  # a new machine: locked until unlocked
    cli(
        "unlock (wrong)",
        _refused(
            run_ams(
                "security",
                "unlock",
                "--password-stdin",
                home=restored,
                input=WRONG["wrong recovery password"] + "\n",
            )
        ),
    )
    cli(
        "unlock",
        _ok(
            run_ams(
                "security",
                "unlock",
                "--password-stdin",
                "--json",
                home=restored,
                input=secrets["recovery password"] + "\n",
            )
        ),
    )
    for place in (home, restored):
        cli(
            f"audit list {place.name}",
            _ok(run_ams("audit", "list", "--json", "--limit", "100000", home=place)),
        )
    cli("status", _ok(run_ams("status", "--json", home=restored)))

    keys = _key_material(home)
    for place in (home, restored):
        for path in sorted(place.rglob("*")):
            if path.is_file() and path.relative_to(place) != Path("keys/service.key"):
                corpus.add(f"file: {place.name}/{path.relative_to(place)}", path.read_bytes())
    yield Run(corpus, secrets, keys, [home, restored])


def _serve(
    server: Server, root: Path, corpus: Corpus, secrets: dict[str, str], token: str, regkey: str
) -> None:
    with contextlib.ExitStack() as stack:
        _serve_with(stack, server, root, corpus, secrets, token, regkey)


def _serve_with(
    stack: contextlib.ExitStack,
    server: Server,
    root: Path,
    corpus: Corpus,
    secrets: dict[str, str],
    token: str,
    regkey: str,
) -> None:
    home = server.home

    def client(headers: dict[str, str] | None = None) -> httpx.Client:
        return stack.enter_context(httpx.Client(base_url=server.url, timeout=30, headers=headers))

    api = client({"Authorization": f"Bearer {token}"})
    agents = [FileAgent(root / f"agent-{n}") for n in (1, 2)]
    for n, agent in enumerate(agents, 1):
        done = agent._run(
            "register",
            "--server",
            server.url,
            "--name",
            f"host-{n}",
            "--registration-key-stdin",
            input=regkey + "\n",
        )
        corpus.add(f"agent {n} register", done.stdout + done.stderr)
        assert done.returncode == 0, done.stderr
        state = json.loads(agent.state.read_text())
        secrets[f"device token {n}"] = state["token"].partition(".")[2]
    devices = [json.loads(a.state.read_text())["device_id"] for a in agents]
    reads = set()
    for turn in (1, 2):
        for n, agent in enumerate(agents, 1):
            done = agent.run_once()
            corpus.add(f"agent {n} run {turn}", done.stdout + done.stderr)
            assert done.returncode == 0, done.stderr
            secrets[f"device {n} password {turn}"] = agent.password
            if n == 1:
                reads.add(f"device 1 password {turn}")
        for device in devices:
            corpus.http("REST expire", api.post(f"/api/v1/devices/{device}/expire"))

    # Reads, where device 1's passwords are shown on purpose.
    corpus.cli(
        "password get",
        _ok(run_ams("password", "get", devices[0], "--history", "--json", home=home)),
        reads,
    )
    corpus.http(
        "REST password read",
        api.get(f"/api/v1/devices/{devices[0]}/password", params={"history": "true"}),
        reads,
    )
    console = client()
    page = console.get("/login")
    login = console.post(
        "/login",
        data={"csrf_token": _CSRF.findall(page.text)[0], "name": "alice", "password": CONSOLE_PASSWORD},
    )
    assert login.status_code == 303, login.text
    secrets["console session cookie"] = console.cookies["ams_session"]
    device_page = corpus.http("console device page", console.get(f"/devices/{devices[0]}"))
    csrf = _CSRF.findall(device_page.text)[0]
    corpus.http(
        "console password read",
        console.post(f"/devices/{devices[0]}/password", data={"csrf_token": csrf}),
        {"device 1 password 2"},
    )
    corpus.http("console overview", console.get("/"))
    corpus.http("console audit", console.get("/audit"))

    # A certificate export with a PFX password; an import with a wrong one.
    listed = corpus.http("REST certificates", api.get("/api/v1/certificates")).json()
    thumbprint = next(c["thumbprint"] for c in listed if c["scope"] == "agent")
    pfx = root / "agent.pfx"
    corpus.cli(
        "certs export",
        _ok(
            run_ams(
                "certs",
                "export",
                thumbprint,
                "--out",
                str(pfx),
                "--password-stdin",
                home=home,
                input=PFX_PASSWORD + "\n",
            )
        ),
    )
    secrets["PFX password"] = PFX_PASSWORD
    corpus.add("exported PFX", pfx.read_bytes())
    # The console's export posts the PFX password in a form.
    form = {"csrf_token": csrf, "password": PFX_PASSWORD, "confirm": PFX_PASSWORD}
    exported = corpus.http("console export", console.post(f"/certificates/{thumbprint}/export", data=form))
    assert exported.status_code == 200 and exported.headers["content-type"] == "application/x-pkcs12"
    corpus.cli(
        "certs import (wrong password)",
        _refused(
            run_ams(
                "certs",
                "import",
                str(pfx),
                "--scope",
                "agent",
                "--password-stdin",
                home=home,
                input=WRONG["wrong PFX password"] + "\n",
            )
        ),
    )

    # Wrong credentials of every kind, and what each answers.
    key_id = token.partition(".")[0]
    wrong_key = {"Authorization": f"Bearer {key_id}.{WRONG['wrong API key secret']}"}
    corpus.http("REST wrong API key", httpx.get(server.url + "/api/v1/status", headers=wrong_key))
    # The secret pasted without its id: the whole of it lands where the key id belongs.
    pasted = {"Authorization": f"Bearer {secrets['API key secret']}"}
    corpus.http("REST secret without its id", httpx.get(server.url + "/api/v1/status", headers=pasted))
    wrong_device = {"Authorization": f"Bearer {devices[0]}.{WRONG['wrong device token secret']}"}
    corpus.http("agent wrong token", httpx.get(server.url + "/api/v1/agent/password", headers=wrong_device))
    wrong_reg = {
        "registration_key": f"{regkey.partition('.')[0]}.{WRONG['wrong API key secret']}",
        "name": "x",
    }
    corpus.http(
        "agent wrong registration key", httpx.post(server.url + "/api/v1/agent/register", json=wrong_reg)
    )
    stranger = client()
    page = stranger.get("/login")
    wrong_login = {
        "csrf_token": _CSRF.findall(page.text)[0],
        "name": "alice",
        "password": WRONG["wrong console password"],
    }
    corpus.http("console wrong login", stranger.post("/login", data=wrong_login))
    corpus.http("REST unknown device", api.get("/api/v1/devices/no-such-device/password"))
    corpus.http("REST bad body", api.post("/api/v1/apikeys", json={"name": "", "role": "root"}))

    corpus.http("REST audit", api.get("/api/v1/audit", params={"limit": 100000}))
    corpus.http("REST status", api.get("/api/v1/status"))
    corpus.http("metrics", httpx.get(server.url + "/metrics"))


def _key_material(home: Path) -> dict[str, bytes]:
    keys: dict[str, bytes] = {}
    service_file = (home / "keys" / "service.key").read_bytes()
    keys["service key"] = decode_service_key(service_file, "service.key")
    keys["service key file"] = service_file.strip()
    instance = open_instance(Home(home), SystemClock())
    try:
        keys["master key"] = instance.keyring.master_key()
        for info in certificates.list_certificates(instance):
            der = certificates.private_key_der(instance, info.thumbprint)
            if der is not None:
                keys[f"private key {info.thumbprint[:12]}"] = der
    finally:
        instance.close()
    return keys


def _needles(run: Run) -> list[Needle]:
    needles = [Needle(name, text_forms(secret)) for name, secret in run.secrets.items()]
    return needles + [Needle(name, key_forms(material)) for name, material in run.keys.items()]


# --- the tests --------------------------------------------------------------------------------


def test_no_secret_anywhere_it_is_not_shown_on_purpose(run: Run) -> None:
    needles = _needles(run)
    hits = scan(run.corpus, needles)
    size = sum(len(c) for c in run.corpus.sources.values())
    record(
        "secrets",
        f"secrets searched for ({len(needles)}) in sources ({len(run.corpus.sources)}, {size // 1024} KiB)",
        len(needles) * len(run.corpus.sources),
        f"{len(hits)} found",
        "- (no randomness)",
    )
    assert not hits, f"secrets found where they must not be: {hits}"


def test_the_scan_finds_what_it_looks_for(run: Run) -> None:
    """The positive control: every secret, planted in each of its forms (a PEM and a base64
    blob at an odd offset for key material), is found; and the outputs that show a secret on
    purpose are found to hold it, so the needles are the real secrets."""
    needles = _needles(run)
    for needle in needles:
        for form in needle.forms:
            planted = Corpus()
            planted.add("planted", b"2026-12-04 DEBUG ams: something " + form + b" happened\n")
            assert scan(planted, [needle]) == [("planted", needle.name)], (needle.name, form[:8])
    for name, material in run.keys.items():
        body = base64.b64encode(material).decode()
        pem = (
            "-----BEGIN PRIVATE KEY-----\n"
            + "\n".join(re.findall(".{1,64}", body))
            + "\n-----END PRIVATE KEY-----\n"
        )
        for shift in range(3):
            planted = Corpus()
            planted.add("pem", pem)
            planted.add("blob", base64.b64encode(os.urandom(shift + 5) + material + os.urandom(7)))
            assert scan(planted, [Needle(name, key_forms(material))]) == [("pem", name), ("blob", name)]
    shown = [(source, name) for source, names in run.corpus.allowed.items() for name in names]
    assert len(shown) >= 8
    found = set(scan(run.corpus, needles, honour_allowed=False))
    assert set(shown) <= found, f"a secret shown on purpose was not found: {set(shown) - found}"
