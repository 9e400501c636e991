"""The web console against a real `ams serve`, over plain HTTP: login, CSRF, cookies, headers."""

from __future__ import annotations

import html
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import run_ams
from server import FileAgent, Server, console_home

ADMIN_PASSWORD = "Violet-Harbour-Engine-58"
READER_PASSWORD = "Copper-Meadow-Signal-93"
TOM_PASSWORD = "Saffron-Kettle-Orbit-64"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("console") / "home"
    console_home(
        home,
        {
            "alice": ("admin", ADMIN_PASSWORD),
            "rita": ("reader", READER_PASSWORD),
            "tom": ("reader", TOM_PASSWORD),
        },
    )
    with Server(home) as server:
        yield server


def _token(html: str) -> str:
    found = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


_clients: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def browser(server: Server) -> httpx.Client:
    client = httpx.Client(base_url=server.url, timeout=10)
    _clients.append(client)
    return client


def login(server: Server, name: str, password: str) -> httpx.Client:
    client = browser(server)
    page = client.get("/login")
    answer = client.post(
        "/login", data={"csrf_token": _token(page.text), "name": name, "password": password, "next": "/audit"}
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/audit", answer.text[:300]
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie  # plain HTTP
    return client


def test_pages_need_a_login_and_send_safe_headers(served: Server) -> None:
    anonymous = httpx.get(served.url + "/audit?event=1000", follow_redirects=False)
    assert (
        anonymous.status_code == 303 and anonymous.headers["location"] == "/login?next=/audit%3Fevent%3D1000"
    )
    page = httpx.get(served.url + "/login")
    assert page.status_code == 200 and "<form" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
    # Every asset the page names is served by AMS itself; nothing comes from another host.
    assert not re.search(r'(src|href)="(https?:)?//', page.text)
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
        assert httpx.get(served.url + asset).status_code == 200, asset


def test_login_overview_and_logout(served: Server) -> None:
    client = login(served, "alice", ADMIN_PASSWORD)
    overview = client.get("/")
    assert overview.status_code == 200 and "Master key" in overview.text and "unlocked" in overview.text
    audit = client.get("/audit", params={"event": "1223"})
    assert audit.status_code == 200 and "user_logged_in" in audit.text and "user:alice" in audit.text
    old_cookie = client.cookies.get("ams_session")
    out = client.post("/logout", data={"csrf_token": _token(overview.text)})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    # The old cookie opens nothing any more, even when a client keeps sending it.
    replay = httpx.get(served.url + "/", cookies={"ams_session": old_cookie})
    assert replay.status_code == 303 and replay.headers["location"].startswith("/login")


def test_a_form_without_its_csrf_token_is_refused(served: Server) -> None:
    client = login(served, "alice", ADMIN_PASSWORD)
    for data in ({}, {"csrf_token": "1.deadbeef"}, {"csrf_token": "9999999999.00"}):
        refused = client.post("/logout", data=data)
        assert refused.status_code == 403 and "security token" in refused.text
    assert client.get("/").status_code == 200  # still logged in: nothing happened
    # A token from another browser's session does not work in this one.
    other = login(served, "alice", ADMIN_PASSWORD)
    foreign = _token(other.get("/").text)
    assert client.post("/logout", data={"csrf_token": foreign}).status_code == 403
    # The login form is protected too: a post without the pre-login cookie's token fails.
    bare = httpx.post(served.url + "/login", data={"name": "alice", "password": ADMIN_PASSWORD})
    assert bare.status_code == 403 and "ams_session" not in bare.headers.get("set-cookie", "")


def test_a_wrong_login_does_not_say_which_part_was_wrong(served: Server) -> None:
    answers = []
    for name, password in (("alice", "not-her-password-1"), ("mallory", ADMIN_PASSWORD)):
        client = browser(served)
        page = client.get("/login")
        answer = client.post(
            "/login", data={"csrf_token": _token(page.text), "name": name, "password": password}
        )
        assert answer.status_code == 401 and "ams_session" not in answer.headers.get("set-cookie", "")
        assert password not in answer.text
        answers.append(re.search(r'role="alert">([^<]+)<', answer.text).group(1))
    assert answers[0] == answers[1] == "wrong user name or password, or the user is disabled"


def test_the_aws_endpoint_still_answers_post_slash(served: Server) -> None:
    # boto3 and the aws command post to the same root the console's overview is at.
    answer = httpx.post(
        served.url + "/",
        headers={"X-Amz-Target": "DirectoryService_20150416.DescribeDirectories"},
        content=b"{}",
    )
    assert answer.status_code in (400, 403) and "__type" in answer.json()


def test_console_log_has_no_secrets(served: Server, tmp_path: Path) -> None:
    login(served, "alice", ADMIN_PASSWORD)
    text = served.log.read_text()
    assert ADMIN_PASSWORD not in text and "ams_session=" not in text and "csrf_token=" not in text


# -- Security ------------------------------------------------------------------------------


def _alert(html: str) -> str:
    found = re.search(r'class="(?:alert [a-z]+|field-error)"[^>]*>([^<]+)<', html)
    return found.group(1) if found else ""


def test_the_recovery_password_is_set_on_the_security_page(served: Server) -> None:
    client = login(served, "alice", ADMIN_PASSWORD)
    page = client.get("/security")
    assert page.status_code == 200 and "unlocked" in page.text
    token = _token(page.text)
    weak = client.post(
        "/security/recovery-password", data={"csrf_token": token, "password": "abc", "confirm": "abc"}
    )
    assert weak.status_code == 422 and "recovery password refused" in weak.text
    assert 'aria-invalid="true"' in weak.text and 'value="abc"' not in weak.text
    differ = client.post(
        "/security/recovery-password",
        data={
            "csrf_token": token,
            "password": "Granite-Falcon-Ledger-72",
            "confirm": "Granite-Falcon-Ledger-73",
        },
    )
    assert differ.status_code == 400 and "the two passwords differ" in differ.text
    good = client.post(
        "/security/recovery-password",
        data={
            "csrf_token": token,
            "password": "Granite-Falcon-Ledger-72",
            "confirm": "Granite-Falcon-Ledger-72",
        },
    )
    assert good.status_code == 200 and "The recovery password was replaced" in good.text
    assert "Granite-Falcon-Ledger-72" not in good.text
    generated = client.post("/security/recovery-password/generate", data={"csrf_token": token})
    shown = re.search(r'id="generated-password">([A-Z0-9-]+)<', generated.text)
    assert generated.status_code == 200 and shown and "nothing AMS keeps can be recovered" in generated.text
    assert shown.group(1) not in client.get("/security").text  # shown once
    # The service took it: the generated password unlocks the master key (checked offline).
    listed = run_ams("audit", "list", "--event", "1100", "--json", home=served.home)
    assert json_actors(listed.stdout)[-2:] == ["user:alice", "user:alice"]


def json_actors(text: str) -> list[str]:
    return [e["actor"] for e in json.loads(text)]


def test_a_reader_sees_the_pages_but_cannot_change_anything(served: Server) -> None:
    client = login(served, "rita", READER_PASSWORD)
    page = client.get("/security")
    assert (
        page.status_code == 200
        and "needs the admin role" in page.text
        and '<form method="post" action="/security' not in page.text
    )
    token = _token(page.text)
    for path, data in (
        (
            "/security/recovery-password",
            {"password": "Granite-Falcon-Ledger-99", "confirm": "Granite-Falcon-Ledger-99"},
        ),
        ("/security/recovery-password/generate", {}),
        ("/devices/expire", {"scope": "agent", "all_in_scope": "1"}),
    ):
        refused = client.post(path, data={"csrf_token": token, **data})
        assert refused.status_code == 403 and "needs the admin role" in refused.text, path


# -- Devices -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def device(served: Server, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, FileAgent]:
    """One real ams-agent, registered and with its first password (file backend)."""
    agent = FileAgent(tmp_path_factory.mktemp("agent"))
    device_id = agent.register(served, "web-01")
    ran = agent.run_once()
    assert ran.returncode == 0, ran.stderr
    return device_id, agent


def test_devices_search_read_a_password_and_expire(served: Server, device: tuple[str, FileAgent]) -> None:
    device_id, agent = device
    password = agent.password
    client = login(served, "rita", READER_PASSWORD)
    listed = client.get("/devices", params={"q": "WEB-0"})
    assert listed.status_code == 200 and device_id in listed.text
    assert password not in html.unescape(listed.text)
    assert device_id not in client.get("/devices", params={"q": "nothing-like-it"}).text
    page = client.get(f"/devices/{device_id}")
    assert page.status_code == 200 and "Rotation history" in page.text
    assert password not in html.unescape(page.text)
    # A password is read by a POST with the CSRF token (never a GET, never in a URL), audited.
    assert client.post(f"/devices/{device_id}/password", data={}).status_code == 403
    shown = client.post(
        f"/devices/{device_id}/password",
        data={"csrf_token": _token(page.text)},
        headers={"HX-Request": "true"},
    )
    # (The password is HTML-escaped in the page: generated ones hold & < > and quotes.)
    assert shown.status_code == 200 and password in html.unescape(shown.text) and "<html" not in shown.text
    reads = json.loads(run_ams("audit", "list", "--event", "1411", "--json", home=served.home).stdout)
    assert reads[-1]["actor"] == "user:rita" and reads[-1]["details"]["via"] == "console"

    admin = login(served, "alice", ADMIN_PASSWORD)
    token = _token(admin.get("/devices").text)
    none_selected = admin.post("/devices/expire", data={"csrf_token": token})
    assert none_selected.status_code == 422 and "select at least one device" in none_selected.text
    expired = admin.post("/devices/expire", data={"csrf_token": token, "device": device_id})
    assert expired.status_code == 303 and expired.headers["location"] == "/devices?expired=1"
    assert "rotation forced" in admin.get("/devices").text
    ran = agent.run_once()
    assert ran.returncode == 0 and "forced" in ran.stdout + ran.stderr, ran.stdout + ran.stderr
    assert agent.password != password


# -- Password settings (certificates and policy) -------------------------------------------


def _state(html: str, thumbprint: str) -> str:
    row = rf'<tr class="cert-(\w+)">\s*<td>[^<]*</td>\s*<td class="ident">{thumbprint}</td>'
    found = re.search(row, html)
    assert found, thumbprint
    return found.group(1)


def _thumbprints(html: str) -> list[str]:
    return re.findall(r'<td class="ident">([0-9a-f]{64})</td>', html)


def test_certificates_generate_export_lose_and_import_back(served: Server, tmp_path: Path) -> None:
    admin = login(served, "alice", ADMIN_PASSWORD)
    page = admin.get("/certificates", params={"scope": "agent"})
    token = _token(page.text)
    before = set(_thumbprints(page.text))
    made = admin.post("/certificates/generate", data={"csrf_token": token, "scope": "agent"})
    assert made.status_code == 303 and made.headers["location"] == "/certificates?scope=agent&done=generated"
    page = admin.get(made.headers["location"])
    (thumbprint,) = set(_thumbprints(page.text)) - before
    assert "A new certificate was generated." in page.text

    weak = admin.post(
        f"/certificates/{thumbprint}/export",
        data={"csrf_token": token, "scope": "agent", "password": "short", "confirm": "short"},
    )
    assert weak.status_code == 422 and "PFX password refused" in weak.text
    pfx_password = "Harbour-Quartz-Window-31"
    exported = admin.post(
        f"/certificates/{thumbprint}/export",
        data={"csrf_token": token, "scope": "agent", "password": pfx_password, "confirm": pfx_password},
    )
    assert exported.status_code == 200 and exported.headers["content-type"] == "application/x-pkcs12"
    assert exported.headers["content-disposition"] == f'attachment; filename="{thumbprint}.pfx"'
    pfx = tmp_path / "exported.pfx"
    pfx.write_bytes(exported.content)
    # The real openssl reads it with the password typed in the form.
    read = subprocess.run(
        ["openssl", "pkcs12", "-in", str(pfx), "-nokeys", "-passin", f"pass:{pfx_password}"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert read.returncode == 0 and "BEGIN CERTIFICATE" in read.stdout

    # Mark lost: first a confirmation that names the count, then the act.
    ask = admin.post(f"/certificates/{thumbprint}/lost", data={"csrf_token": token, "scope": "agent"})
    assert ask.status_code == 200 and "Yes, mark it lost and expire 0 passwords" in ask.text
    assert _state(admin.get("/certificates").text, thumbprint) != "lost"  # nothing happened yet
    done = admin.post(
        f"/certificates/{thumbprint}/lost", data={"csrf_token": token, "scope": "agent", "confirm": "yes"}
    )
    assert done.status_code == 200 and "is marked lost" in done.text
    assert _state(done.text, thumbprint) == "lost"

    # The exported PFX brings the key back.
    wrong = admin.post(
        "/certificates/import",
        data={"csrf_token": token, "scope": "agent", "password": "not-it"},
        files={"pfx": ("exported.pfx", exported.content, "application/x-pkcs12")},
    )
    assert wrong.status_code >= 400 and 'id="import-error"' in wrong.text
    back = admin.post(
        "/certificates/import",
        data={"csrf_token": token, "scope": "agent", "password": pfx_password},
        files={"pfx": ("exported.pfx", exported.content, "application/x-pkcs12")},
    )
    assert back.status_code == 303 and back.headers["location"].endswith("done=restored")


def test_a_pfx_without_a_password_imports(served: Server, tmp_path: Path) -> None:
    key, cert, pfx = tmp_path / "k.pem", tmp_path / "c.pem", tmp_path / "empty.pfx"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "30", "-subj", "/CN=empty-password"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        ["openssl", "pkcs12", "-export", "-inkey", str(key), "-in", str(cert), "-out", str(pfx),
         "-passout", "pass:"],
        check=True, capture_output=True,
    )  # fmt: skip
    admin = login(served, "alice", ADMIN_PASSWORD)
    token = _token(admin.get("/certificates").text)
    done = admin.post(
        "/certificates/import",
        data={"csrf_token": token, "scope": "agent", "password": ""},
        files={"pfx": ("empty.pfx", pfx.read_bytes(), "application/x-pkcs12")},
    )
    assert done.status_code == 303 and done.headers["location"].endswith("done=imported")
    missing = admin.post("/certificates/import", data={"csrf_token": token, "scope": "agent"})
    assert missing.status_code == 422 and "choose the PFX file" in missing.text


def test_the_password_policy_form(served: Server) -> None:
    admin = login(served, "alice", ADMIN_PASSWORD)
    token = _token(admin.get("/certificates").text)
    bad = admin.post("/certificates/policy", data={"csrf_token": token, "scope": "agent", "length": "4"})
    assert bad.status_code == 422 and "length must be a whole number from 12 to 256" in bad.text
    good = admin.post(
        "/certificates/policy",
        data={"csrf_token": token, "scope": "agent", "length": "24", "max_age_days": "14"},
    )
    assert good.status_code == 303
    page = admin.get(good.headers["location"]).text
    assert 'name="length" inputmode="numeric" value="24"' in page and "The password policy was saved." in page
    unknown = admin.get("/certificates", params={"scope": "d-nothere00"})
    assert unknown.status_code in (404, 422)


# -- Database (backups) ----------------------------------------------------------------------


def _wait_for_backup(client: httpx.Client) -> str:
    for _ in range(120):
        progress = client.get("/database/backup/progress")
        if progress.headers.get("hx-refresh") == "true":
            return progress.text
        time.sleep(0.5)
    raise AssertionError("Backup now did not finish in 60 s")


def test_backup_now_schedule_verify_and_the_restore_command(served: Server, tmp_path: Path) -> None:
    admin = login(served, "alice", ADMIN_PASSWORD)
    page = admin.get("/database")
    assert page.status_code == 200 and "Backup now" in page.text
    token = _token(page.text)
    started = admin.post("/database/backup", data={"csrf_token": token})
    assert started.status_code == 303
    done = _wait_for_backup(admin)
    assert "was written" in done and "and verified" in done, done
    backup_id = re.search(r"Backup (\S+) was written", done).group(1)
    listed = admin.get("/database").text
    assert backup_id in listed and re.search(rf"{backup_id}</td>.*?yes, ", listed, re.S)

    deep = admin.post("/database/verify", data={"csrf_token": token, "backup_id": backup_id, "deep": "1"})
    assert deep.status_code == 200 and f"A restore drill (deep verify) of {backup_id} passed." in deep.text
    command = admin.get("/database", params={"restore": backup_id}).text
    assert (
        f"ams backup restore {served.home}/backups/" in html.unescape(command)
        and f"--home {served.home}" in command
    )

    missing = tmp_path / "not-there"
    refused = admin.post(
        "/database/schedule",
        data={"csrf_token": token, "when": "at", "at": "03:30", "destination": str(missing)},
    )
    assert refused.status_code == 422 and "does not exist" in refused.text and not missing.exists()
    bad = admin.post(
        "/database/schedule", data={"csrf_token": token, "when": "at", "at": "03:30", "retain_days": "400"}
    )
    assert bad.status_code == 422 and "between 0 and 365" in bad.text
    saved = admin.post(
        "/database/schedule",
        data={"csrf_token": token, "when": "every", "every": "6h", "destination": str(missing), "create": "1",
              "retain_days": "0", "keep_last": "7"},
    )  # fmt: skip
    assert saved.status_code == 200 and "The schedule was saved." in saved.text and missing.is_dir()
    shown = json.loads(run_ams("backup", "schedule", "show", "--json", home=served.home).stdout)
    assert (
        shown["every_seconds"] == 6 * 3600
        and shown["keep_last"] == 7
        and shown["destination"] == str(missing)
    )


def test_a_session_cookie_stops_working_after_it_expires(tmp_path: Path) -> None:
    home = console_home(tmp_path / "home", {"alice": ("admin", ADMIN_PASSWORD)})
    with Server(home) as server:
        cookie = login(server, "alice", ADMIN_PASSWORD).cookies.get("ams_session")
        assert httpx.get(server.url + "/", cookies={"ams_session": cookie}).status_code == 200
    # The same service 13 hours later (past the 12-hour absolute limit): the cookie opens nothing.
    with Server(home, env={"AMS_CLOCK_OFFSET_SECONDS": str(13 * 3600)}) as later:
        answer = httpx.get(later.url + "/", cookies={"ams_session": cookie})
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login")


def test_failed_logins_slow_the_next_ones(served: Server) -> None:
    # From another loopback address, so the other tests' logins (127.0.0.1) are not slowed.
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    client = httpx.Client(base_url=served.url, transport=transport, timeout=10)
    _clients.append(client)
    token = _token(client.get("/login").text)
    for attempt in range(5):
        wrong = client.post(
            "/login", data={"csrf_token": token, "name": "tom", "password": f"guess-{attempt}"}
        )
        assert wrong.status_code == 401
    # The sixth comes too soon: refused before the password is looked at, the right one too.
    slowed = client.post("/login", data={"csrf_token": token, "name": "tom", "password": TOM_PASSWORD})
    assert slowed.status_code == 429 and "try again in" in slowed.text
    assert "ams_session" not in slowed.headers.get("set-cookie", "")
    # Another user on another address is not slowed by it.
    assert login(served, "alice", ADMIN_PASSWORD).get("/").status_code == 200
    events = json.loads(run_ams("audit", "list", "--event", "1224", "--json", home=served.home).stdout)
    assert sum(1 for e in events if e["details"].get("address") == "127.0.0.2") == 5


def test_a_snapshot_is_deleted_only_under_its_own_directory(served: Server) -> None:
    ids = [
        json.loads(run_ams("directory", "create", f"d{n}.example.com", "--json", home=served.home).stdout)[
            "id"
        ]
        for n in (1, 2)
    ]
    snap = json.loads(run_ams("snapshot", "create", ids[0], "--json", home=served.home).stdout)["id"]
    admin = login(served, "alice", ADMIN_PASSWORD)
    token = _token(admin.get(f"/directories/{ids[1]}").text)
    wrong = admin.post(f"/directories/{ids[1]}/snapshots/{snap}/delete", data={"csrf_token": token})
    assert wrong.status_code == 422 and "does not belong to directory" in wrong.text
    assert snap in admin.get(f"/directories/{ids[0]}").text
    right = admin.post(f"/directories/{ids[0]}/snapshots/{snap}/delete", data={"csrf_token": token})
    assert right.status_code == 303 and snap not in admin.get(f"/directories/{ids[0]}").text
