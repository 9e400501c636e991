"""Settings of an instance: ``$AMS_HOME/config/ams.toml``, overridable by ``AMS_*`` variables.

Environment variables win over the file, with ``__`` between section and key:
``AMS_DATABASE__URL``, ``AMS_SERVER__PORT``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ams.errors import BadInput

__all__ = ["DatabaseSettings", "ServerSettings", "Settings", "default_config_text", "load_settings"]


class DatabaseSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Empty means the embedded SQLite database at data/ams.db.
    url: str = ""


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = 8080


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AMS_", env_nested_delimiter="__", extra="forbid", nested_model_default_partial_update=True
    )

    database: DatabaseSettings = DatabaseSettings()
    server: ServerSettings = ServerSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init arguments; the environment overrides them.
        return (env_settings, init_settings)


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
    )


def load_settings(config_file: Path) -> Settings:
    data: dict[str, Any] = {}
    if config_file.exists():
        try:
            data = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise BadInput(f"{config_file} is not valid TOML ({exc}): fix the file") from exc
        except OSError as exc:
            raise BadInput(f"cannot read {config_file}: {exc.strerror}") from exc
    try:
        return Settings(**data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        env_name = "AMS_" + "__".join(str(p) for p in first["loc"]).upper()
        raise BadInput(f"setting {where} (from {config_file} or {env_name}): {first['msg']}; fix it") from exc
