"""The web console in a real browser: Playwright driving Debian's Chromium against `ams serve`.

No browser is downloaded (none can be, here): the tests use /usr/bin/chromium, which
.ci/run installs. Without it they skip, except under CI=true, where a missing browser is a
failure. Each page's screenshot is written to $AMS_SCREENSHOTS when set (`make screenshots`
sets it to docs/screenshots), else to the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import run_ams
from server import FileAgent, Server, console_home

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ADMIN_PASSWORD = "Violet-Harbour-Engine-58"
READER_PASSWORD = "Copper-Meadow-Signal-93"
# Read at import: the suite's autouse fixture clears every AMS_* variable before a test runs.
SCREENSHOTS = os.environ.get("AMS_SCREENSHOTS")


def _playwright() -> Any:
    if not Path(CHROMIUM).exists():
        reason = "Chromium is not installed (Debian package chromium; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: `make test` installs it with the dev extras")
    return sync_playwright


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("console-browser") / "home"
    console_home(home, {"alice": ("admin", ADMIN_PASSWORD), "rita": ("reader", READER_PASSWORD)})
    with Server(home) as server:
        yield server


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    sync_playwright = _playwright()
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    where = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    where.mkdir(parents=True, exist_ok=True)
    return where


def _login(page: Any, server: Server, name: str, password: str) -> None:
    page.goto(server.url + "/")
    assert "/login" in page.url
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(server.url + "/")


def _nav(page: Any, name: str) -> None:
    page.get_by_role("navigation", name="Console").get_by_role("link", name=name).click()


def test_log_in_see_the_overview_filter_the_audit_and_log_out(
    chromium: Any, served: Server, shots: Path
) -> None:
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(served.url + "/")
    page.screenshot(path=str(shots / "login.png"))
    _login(page, served, "alice", ADMIN_PASSWORD)
    assert page.get_by_role("heading", name="Overview").is_visible()
    assert page.get_by_text("unlocked").first.is_visible()
    page.screenshot(path=str(shots / "overview.png"), full_page=True)

    _nav(page, "Audit")
    page.get_by_label("Event id").fill("1223")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/audit?event=1223*")
    rows = page.locator("table.events tbody tr")
    assert rows.count() >= 1
    assert "user_logged_in" in rows.first.inner_text() and "user:alice" in rows.first.inner_text()
    page.screenshot(path=str(shots / "audit.png"), full_page=True)

    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/login")
    page.goto(served.url + "/audit")
    assert "/login" in page.url  # the cookie opens nothing after logout
    context.close()


def test_a_wrong_login_is_shown_beside_the_form(chromium: Any, served: Server) -> None:
    context = chromium.new_context()
    page = context.new_page()
    page.goto(served.url + "/login")
    page.get_by_label("User name").fill("alice")
    page.get_by_label("Password").fill("not-her-password")
    page.get_by_role("button", name="Log in").click()
    alert = page.get_by_role("alert")
    assert alert.inner_text() == "wrong user name or password, or the user is disabled"
    assert page.get_by_label("Password").input_value() == ""  # the typed password is not sent back
    context.close()


def test_readable_on_a_narrow_window_and_by_keyboard(chromium: Any, served: Server, shots: Path) -> None:
    context = chromium.new_context(viewport={"width": 400, "height": 800})
    page = context.new_page()
    page.goto(served.url + "/login")
    # By keyboard alone: the name field has the focus, Tab goes to the password, Enter sends.
    assert page.evaluate("document.activeElement.id") == "name"
    page.keyboard.type("rita")
    page.keyboard.press("Tab")
    page.keyboard.type(READER_PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(served.url + "/")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 400, f"the overview is {width} px wide in a 400 px window"
    page.screenshot(path=str(shots / "overview-narrow.png"), full_page=True)
    context.close()


def test_set_the_recovery_password_in_the_browser(chromium: Any, served: Server, shots: Path) -> None:
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    _login(page, served, "alice", ADMIN_PASSWORD)
    _nav(page, "Security")
    page.get_by_label("New recovery password").fill("short")
    assert "at least 12 are needed" in page.locator("#password-strength").inner_text()
    page.get_by_label("New recovery password").fill("password1234")
    page.get_by_label("The same again").fill("password1234")
    page.get_by_role("button", name="Set the recovery password").click()
    # The service's own words, beside the field that caused them.
    error = page.locator("#password-error")
    assert "recovery password refused" in error.inner_text()
    assert page.get_by_label("New recovery password").get_attribute("aria-invalid") == "true"
    page.get_by_label("New recovery password").fill("Granite-Falcon-Ledger-72")
    page.get_by_label("The same again").fill("Granite-Falcon-Ledger-72")
    page.get_by_role("button", name="Set the recovery password").click()
    assert "The recovery password was replaced" in page.get_by_role("status").inner_text()
    page.screenshot(path=str(shots / "security.png"), full_page=True)
    context.close()


def test_reveal_copy_hide_and_expire_a_device_password(
    chromium: Any, served: Server, shots: Path, tmp_path: Path
) -> None:
    agent = FileAgent(tmp_path / "agent")
    device_id = agent.register(served, "web-07")
    assert agent.run_once().returncode == 0
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=served.url)
    page = context.new_page()
    _login(page, served, "alice", ADMIN_PASSWORD)
    _nav(page, "Devices")
    page.get_by_label("Name or id").fill("web-07")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="web-07").click()
    page.wait_for_url(f"**/devices/{device_id}")
    assert agent.password not in page.content()
    page.get_by_role("button", name="Show the current password").click()
    secret = page.locator("code.secret").first
    secret.wait_for()
    assert secret.inner_text() == agent.password
    page.get_by_role("button", name="Copy").first.click()
    assert page.evaluate("navigator.clipboard.readText()") == agent.password
    page.get_by_role("button", name="Hide").click()
    assert page.locator("code.secret").count() == 0
    page.screenshot(path=str(shots / "device.png"), full_page=True)  # no password in a picture
    page.get_by_role("button", name="Expire the password now").click()
    assert "next check-in" in page.get_by_role("status").inner_text()
    before = agent.password
    ran = agent.run_once()
    assert ran.returncode == 0 and "forced" in ran.stdout + ran.stderr
    assert agent.password != before
    _nav(page, "Devices")
    page.screenshot(path=str(shots / "devices.png"), full_page=True)
    context.close()


def test_a_reader_is_refused_the_admin_forms(chromium: Any, served: Server) -> None:
    context = chromium.new_context()
    page = context.new_page()
    _login(page, served, "rita", READER_PASSWORD)
    page.goto(served.url + "/security")
    assert page.get_by_text("Setting the recovery password needs the admin role.").is_visible()
    assert page.get_by_role("button", name="Set the recovery password").count() == 0
    context.close()


def test_generate_export_and_import_back_a_certificate(
    chromium: Any, served: Server, shots: Path, tmp_path: Path
) -> None:
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    _login(page, served, "alice", ADMIN_PASSWORD)
    _nav(page, "Password settings")
    before = page.locator("td.ident").all_inner_texts()
    page.get_by_role("button", name="Generate a new certificate").click()
    assert "A new certificate was generated." in page.get_by_role("status").inner_text()
    (thumbprint,) = set(page.locator("td.ident").all_inner_texts()) - set(before)
    row = page.locator("tr", has_text=thumbprint)
    row.get_by_text("Export PFX").click()
    row.get_by_label("PFX password").fill("Harbour-Quartz-Window-31")
    row.get_by_label("The same again").fill("Harbour-Quartz-Window-31")
    with page.expect_download() as download:
        row.get_by_role("button", name="Download the PFX").click()
    pfx = tmp_path / "cert.pfx"
    download.value.save_as(pfx)
    assert download.value.suggested_filename == f"{thumbprint}.pfx" and pfx.stat().st_size > 1000
    page.screenshot(path=str(shots / "certificates.png"), full_page=True)

    row.get_by_role("button", name="Mark lost…").click()
    page.get_by_role("button", name="Yes, mark it lost").click()
    assert "is marked lost" in page.get_by_role("status").inner_text()
    page.get_by_label("PFX file").set_input_files(str(pfx))
    page.get_by_label("PFX password").last.fill("Harbour-Quartz-Window-31")
    page.get_by_role("button", name="Import").click()
    assert "its passwords read again" in page.get_by_role("status").inner_text()
    context.close()


LDIF = """dn: DC=corp,DC=example,DC=com
objectClass: domain
dc: corp

dn: OU=Computers,DC=corp,DC=example,DC=com
objectClass: organizationalUnit
ou: Computers
"""

LATER = """dn: CN=added-later,OU=Computers,DC=corp,DC=example,DC=com
objectClass: computer
cn: added-later
"""


def test_snapshot_restore_watched_until_active_and_delete(
    chromium: Any, served: Server, shots: Path, tmp_path: Path
) -> None:
    made = run_ams("directory", "create", "corp.example.com", "--json", home=served.home)
    assert made.returncode == 0, made.stderr
    directory_id = json.loads(made.stdout)["id"]
    (tmp_path / "base.ldif").write_text(LDIF)
    (tmp_path / "later.ldif").write_text(LATER)
    assert (
        run_ams("directory", "import", directory_id, str(tmp_path / "base.ldif"), home=served.home).returncode
        == 0
    )

    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    _login(page, served, "alice", ADMIN_PASSWORD)
    _nav(page, "Directories")
    page.get_by_role("link", name="corp.example.com").click()
    assert page.get_by_text("0 of 5").is_visible()
    page.get_by_label("Name (optional)").fill("before the change")
    page.get_by_role("button", name="Take a snapshot").click()
    assert "The snapshot was taken." in page.get_by_role("status").inner_text()
    assert page.get_by_text("1 of 5").is_visible()

    later = run_ams("directory", "import", directory_id, str(tmp_path / "later.ldif"), home=served.home)
    assert later.returncode == 0, later.stderr
    page.reload()
    assert page.get_by_text("CN=added-later").count() == 1
    page.get_by_label("DN contains").fill("ADDED-later")
    page.get_by_role("button", name="Search").click()
    assert page.locator("table.entries tbody tr").count() == 1
    page.goto(served.url + f"/directories/{directory_id}")

    page.get_by_role("button", name="Restore…").click()
    assert page.get_by_text("Every change made since then is lost").is_visible()
    page.get_by_role("button", name="Yes, restore").click()
    # The page follows the stage (Restoring, then Active) and reloads itself when done.
    page.locator("#stage.stage-active").wait_for(timeout=60_000)
    page.wait_for_load_state()
    assert page.get_by_text("CN=added-later").count() == 0
    page.screenshot(path=str(shots / "directory.png"), full_page=True)

    page.get_by_role("button", name="Delete").first.click()
    assert "The snapshot was deleted." in page.get_by_role("status").inner_text()
    assert page.get_by_text("0 of 5").is_visible()
    context.close()


def test_backup_now_is_followed_until_verified_and_the_schedule_changes(
    chromium: Any, served: Server, shots: Path
) -> None:
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    _login(page, served, "alice", ADMIN_PASSWORD)
    _nav(page, "Database")
    page.get_by_role("button", name="Backup now").click()
    # The progress is polled by htmx; when the backup is done the page reloads itself.
    done = page.get_by_text(re.compile(r"Backup \S+ was written .* and verified\."))
    done.wait_for(timeout=60_000)
    backup_id = re.search(r"Backup (\S+) was written", done.inner_text()).group(1)
    row = page.locator("tr", has_text=backup_id)
    assert "yes," in row.inner_text()
    row.get_by_role("link", name="How to restore").click()
    assert page.locator("#restore-command").inner_text().startswith("ams backup restore ")

    page.get_by_label("Daily time").fill("04:15")
    page.get_by_label("Keep last").fill("10")
    page.get_by_role("button", name="Save the schedule").click()
    assert "The schedule was saved." in page.get_by_role("status").first.inner_text()
    assert "daily at 04:15 UTC" in page.locator("section.card", has_text="Schedule").inner_text()
    page.screenshot(path=str(shots / "database.png"), full_page=True)
    context.close()
