"""The agent's state file: which server, which device, its token and the last password version.

JSON, 0600 in a 0700 folder (one open to other users is refused), replaced atomically; the
format is in docs/formats.md ("ams-agent state file"). The token is the device's only
credential, so the file is as secret as a password.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ams.agent._files import ensure_private_folder, write_private
from ams.agent.client import normalise_server_url
from ams.errors import AgentNotRegistered, AgentStateNotPrivate, BadInput, Conflict

__all__ = [
    "DEFAULT_STATE",
    "STATE_FORMAT",
    "AgentState",
    "check_state_folder",
    "exclusive",
    "load_state",
    "save_state",
]

DEFAULT_STATE = Path("/var/lib/ams-agent/state.json")
STATE_FORMAT = 1


@dataclass(frozen=True)
class AgentState:
    server: str
    device_id: str
    token: str = field(repr=False)
    name: str
    registered_at: str
    last_version: int | None = None
    # Directory mode (``ams-agent run --mode directory``): the device's computer object.
    directory_id: str | None = None
    dn: str | None = None
    ldap_url: str | None = None

    def with_version(self, version: int) -> AgentState:
        return replace(self, last_version=version)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "server": self.server,
            "device_id": self.device_id,
            "token": self.token,
            "name": self.name,
            "registered_at": self.registered_at,
            "last_version": self.last_version,
            **{
                key: value
                for key, value in (
                    ("directory_id", self.directory_id),
                    ("dn", self.dn),
                    ("ldap_url", self.ldap_url),
                )
                if value is not None
            },
        }


def check_state_folder(path: Path) -> None:
    """Refuse a state folder (the folder of ``path``) that exists and others can reach: it
    must be 0700 (docs/formats.md).

    It is not tightened here: an existing folder may be shared (``/tmp``, ``/etc``), and
    changing its mode is not the agent's to do. The message says how to fix it.
    """
    folder = path.parent
    try:
        mode = stat.S_IMODE(folder.stat().st_mode)
    except OSError:
        return  # reading or writing the file in it reports what is wrong
    if mode & 0o077:
        raise AgentStateNotPrivate(
            f"the agent state folder {folder} is mode {mode:04o}, open to other users, and the state "
            f"file holds the device token: run `chmod 700 {folder}`, or give --state a file in a "
            "folder of its own"
        )


def _bad(path: Path, why: str) -> BadInput:
    return BadInput(
        f"the agent state file {path} is not usable ({why}): restore it from a copy, "
        "or remove it and run `ams-agent register` again"
    )


def load_state(path: Path) -> AgentState:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise AgentNotRegistered(
            f"no agent state at {path}: run `ams-agent register --server URL "
            "--registration-key-stdin` first (or pass the right --state)"
        ) from None
    except OSError as exc:
        raise _bad(path, exc.strerror or type(exc).__name__) from None
    check_state_folder(path)
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _bad(path, "not JSON") from None
    if not isinstance(data, dict):
        raise _bad(path, "not a JSON object")
    fmt = data.get("format")
    if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > STATE_FORMAT:
        raise BadInput(
            f"the agent state file {path} was written by a newer ams-agent (format {fmt}): "
            "install that version or a newer one"
        )
    if fmt != STATE_FORMAT:
        raise _bad(path, "unknown format")
    strings = ("server", "device_id", "token", "name", "registered_at")
    for key in strings:
        if not isinstance(data.get(key), str) or not data[key]:
            raise _bad(path, f"{key} missing")
    try:
        server = normalise_server_url(data["server"])
    except BadInput:
        raise _bad(path, "server is not an http:// or https:// URL") from None
    version = data.get("last_version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
        raise _bad(path, "last_version is not a version number")
    optional = {}
    for key in ("directory_id", "dn", "ldap_url"):
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise _bad(path, f"{key} is not text")
        optional[key] = value
    return AgentState(
        server=server,
        device_id=data["device_id"],
        token=data["token"],
        name=data["name"],
        registered_at=data["registered_at"],
        last_version=version,
        **optional,
    )


def save_state(path: Path, state: AgentState, *, replace: bool = True) -> bool:
    """Write the state atomically, 0600, in a 0700 folder (created so when missing; an
    existing folder open to others is refused).

    With ``replace=False`` an existing file is kept and False is returned.
    """
    ensure_private_folder(path.parent)
    check_state_folder(path)
    text = json.dumps(state.to_dict(), indent=2, sort_keys=True) + "\n"
    return write_private(path, text.encode("utf-8"), replace=replace)


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold ``<state>.lock`` so two agents never rotate the same device at once."""
    ensure_private_folder(path.parent)
    check_state_folder(path)
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Conflict(
                f"another ams-agent is using {path} right now: wait for it to finish, "
                "or stop it (one agent per state file)"
            ) from None
        yield
    finally:
        os.close(fd)
