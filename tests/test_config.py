"""config/ams.toml and its AMS_<SECTION>__<KEY> overrides (docs/formats.md section 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ams.config import DatabaseSettings, ServerSettings, Settings, default_config_text, load_settings
from ams.errors import BadInput


def _load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "ams.toml"
    path.write_text(text)
    return load_settings(path, environ or {})


def test_the_file_ams_init_writes_gives_the_defaults(tmp_path: Path) -> None:
    assert _load(tmp_path, default_config_text()) == Settings()
    assert Settings().database == DatabaseSettings(url="")
    assert Settings().server == ServerSettings(host="127.0.0.1", port=8080)
    pg = _load(tmp_path, default_config_text("postgresql://ams@db/ams"))
    assert pg.database.url == "postgresql://ams@db/ams"


def test_a_missing_file_or_section_takes_the_defaults(tmp_path: Path) -> None:
    assert load_settings(tmp_path / "absent.toml", {}) == Settings()
    assert _load(tmp_path, "[server]\nport = 9000\n") == Settings(server=ServerSettings(port=9000))


def test_the_environment_wins_over_the_file_in_any_case(tmp_path: Path) -> None:
    text = '[database]\nurl = "postgresql://file/db"\n[server]\nport = 9000\n'
    environ = {"AMS_DATABASE__URL": "postgresql://env/db", "ams_server__port": "9100", "AMS_HOME": "/x"}
    settings = _load(tmp_path, text, environ)
    assert settings.database.url == "postgresql://env/db"
    assert settings.server == ServerSettings(host="127.0.0.1", port=9100)
    # Other AMS_ variables (AMS_HOME, AMS_SERVICE_KEY, ...) are not settings.
    assert _load(tmp_path, "", {"AMS_SERVICE_KEY": "k", "AMS_NOPE__X": "1"}) == Settings()


@pytest.mark.parametrize(
    ("text", "environ", "message"),
    [
        ("[server]\nport = 'eighty'\n", {}, r"server\.port \(from .* or AMS_SERVER__PORT\) must be a whole"),
        ("[server]\nport = true\n", {}, r"server\.port .* must be a whole number"),
        ("[server]\nport = 70000\n", {}, r"server\.port .* from 0 to 65535"),
        ("", {"AMS_SERVER__PORT": "80x"}, r"server\.port .* must be a whole number"),
        ("[database]\nurl = 5\n", {}, r"database\.url .* must be a string"),
        ("[datbase]\nurl = ''\n", {}, r"setting datbase \(from [^)]*ams\.toml\) is not a section AMS knows"),
        ("[server]\nhots = 'x'\n", {}, r"server\.hots .* is not a setting AMS knows"),
        ("database = 'x'\n", {}, r"setting database .* must be a table"),
        ("[server\n", {}, r"is not valid TOML"),
    ],
)
def test_a_bad_setting_is_named_with_what_to_fix(
    tmp_path: Path, text: str, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(BadInput, match=message) as caught:
        _load(tmp_path, text, environ)
    assert caught.value.message.endswith("fix it") or "fix the file" in caught.value.message


def test_audit_retention_days_from_the_file_or_the_environment(tmp_path: Path) -> None:
    assert Settings().audit.retention_days == 365
    assert _load(tmp_path, "[audit]\nretention_days = 0\n").audit.retention_days == 0
    assert (
        _load(
            tmp_path, "[audit]\nretention_days = 30\n", {"AMS_AUDIT__RETENTION_DAYS": "90"}
        ).audit.retention_days
        == 90
    )
    for bad in ("-1", "36501", '"30"', "30.5"):
        with pytest.raises(BadInput, match=r"audit\.retention_days"):
            _load(tmp_path, f"[audit]\nretention_days = {bad}\n")
