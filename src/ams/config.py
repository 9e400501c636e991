"""Settings of an instance: ``$AMS_HOME/config/ams.toml``, overridable by ``AMS_*`` variables.

Environment variables win over the file, with ``__`` between section and key:
``AMS_DATABASE__URL``, ``AMS_SERVER__HOST``, ``AMS_SERVER__PORT`` (docs/formats.md section
2). Every command that opens an instance reads this, so it is plain Python: a validation
library would cost more at start-up than the rest of a small command.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ams.errors import BadInput

__all__ = [
    "AuditSettings",
    "DatabaseSettings",
    "ServerSettings",
    "Settings",
    "default_config_text",
    "load_settings",
]


@dataclass(frozen=True)
class DatabaseSettings:
    # Empty means the embedded SQLite database at data/ams.db.
    url: str = ""


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080


@dataclass(frozen=True)
class AuditSettings:
    # Days an audit event is kept; 0 keeps every event for ever (ams.audit_retention).
    retention_days: int = 365


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)


# section -> key -> the type its value must have
_KEYS: dict[str, dict[str, type]] = {
    "database": {"url": str},
    "server": {"host": str, "port": int},
    "audit": {"retention_days": int},
}
# The largest retention_days: a hundred years.
MAX_RETENTION_DAYS = 36500


def default_config_text(database_url: str = "") -> str:
    url_line = f'url = "{database_url}"' if database_url else 'url = ""  # empty: data/ams.db (SQLite)'
    return (
        "# AMS settings. Environment variables AMS_<SECTION>__<KEY> override these.\n"
        "\n"
        "[database]\n"
        f"{url_line}\n"
        "\n"
        "[server]\n"
        'host = "127.0.0.1"\n'
        "port = 8080\n"
        "\n"
        "[audit]\n"
        "retention_days = 365  # 0: keep every event for ever\n"
    )


class _Invalid(Exception):
    def __init__(self, section: str, key: str | None, problem: str) -> None:
        super().__init__(problem)
        self.where = f"{section}.{key}" if key else section
        self.known = key in _KEYS.get(section, {})
        self.env_name = f"AMS_{section}__{key}".upper()
        self.problem = problem


def _value(section: str, key: str, raw: Any, from_env: bool) -> Any:
    wanted = _KEYS[section][key]
    if wanted is int:
        if from_env and isinstance(raw, str) and raw.strip().isdigit():
            raw = int(raw.strip())
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise _Invalid(section, key, "must be a whole number")
        if key == "port" and not 0 <= raw <= 65535:
            raise _Invalid(section, key, "must be a port number from 0 to 65535")
        if key == "retention_days" and not 0 <= raw <= MAX_RETENTION_DAYS:
            problem = f"must be a number of days from 0 (keep every event) to {MAX_RETENTION_DAYS}"
            raise _Invalid(section, key, problem)
        return raw
    if not isinstance(raw, str):
        raise _Invalid(section, key, "must be a string")
    return raw


def _from_file(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    values: dict[str, dict[str, Any]] = {}
    for section, body in data.items():
        if section not in _KEYS:
            raise _Invalid(section, None, "is not a section AMS knows (docs/formats.md lists them)")
        if not isinstance(body, dict):
            raise _Invalid(section, None, "must be a table ([section])")
        for key, raw in body.items():
            if key not in _KEYS[section]:
                raise _Invalid(section, key, "is not a setting AMS knows (docs/formats.md lists them)")
            values.setdefault(section, {})[key] = _value(section, key, raw, from_env=False)
    return values


def _from_environment(environ: Mapping[str, str], values: dict[str, dict[str, Any]]) -> None:
    # Names are matched without regard to case, as on the shells that set them.
    for name, raw in environ.items():
        upper = name.upper()
        if not upper.startswith("AMS_"):
            continue
        section, _, key = upper.removeprefix("AMS_").lower().partition("__")
        if key in _KEYS.get(section, {}):
            values.setdefault(section, {})[key] = _value(section, key, raw, from_env=True)


def load_settings(config_file: Path, environ: Mapping[str, str] | None = None) -> Settings:
    data: dict[str, Any] = {}
    if config_file.exists():
        try:
            data = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise BadInput(f"{config_file} is not valid TOML ({exc}): fix the file") from exc
        except OSError as exc:
            raise BadInput(f"cannot read {config_file}: {exc.strerror}") from exc
    try:
        values = _from_file(data)
        _from_environment(os.environ if environ is None else environ, values)
    except _Invalid as exc:
        source = f"{config_file} or {exc.env_name}" if exc.known else str(config_file)
        raise BadInput(f"setting {exc.where} (from {source}) {exc.problem}; fix it") from None
    return Settings(
        database=DatabaseSettings(**values.get("database", {})),
        server=ServerSettings(**values.get("server", {})),
        audit=AuditSettings(**values.get("audit", {})),
    )
