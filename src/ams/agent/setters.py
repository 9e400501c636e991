"""How a new password reaches the device: ``chpasswd``, or a file (for tests and demos)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ams.agent._files import write_private
from ams.errors import BadInput

__all__ = ["ChpasswdSetter", "FileSetter", "Setter", "SetterFailed", "parse_setter", "valid_account"]


# The longest message of a failed chpasswd that is kept: one log line, not a flood.
_MAX_DETAIL = 2000


def valid_account(name: str) -> bool:
    """A local account name a setter can take: 1-64 printable characters, no colon or space
    (``chpasswd`` reads ``account:password`` lines)."""
    return 0 < len(name) <= 64 and name.isprintable() and not any(c in name for c in ": ")


class SetterFailed(Exception):
    """The password was not set. The message names why and never holds the password."""


class Setter(Protocol):
    @property
    def description(self) -> str: ...

    def set(self, account: str, password: str) -> None: ...


@dataclass(frozen=True)
class ChpasswdSetter:
    """Runs ``chpasswd`` with ``account:password`` on standard input, never as an argument
    (arguments are visible to every user in ``ps``)."""

    command: str = "chpasswd"
    timeout: float = 60.0

    @property
    def description(self) -> str:
        return "chpasswd"

    def set(self, account: str, password: str) -> None:
        if not valid_account(account):
            raise SetterFailed(f"the account name {account!r} cannot be given to chpasswd")
        try:
            proc = subprocess.run(
                [self.command],
                input=f"{account}:{password}\n",
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except FileNotFoundError:
            raise SetterFailed(f"{self.command} is not installed (or not on PATH)") from None
        except subprocess.TimeoutExpired:
            raise SetterFailed(f"{self.command} did not finish within {self.timeout:g} s") from None
        except OSError as exc:
            raise SetterFailed(f"{self.command} could not run ({exc.strerror})") from None
        if proc.returncode != 0:
            # Its whole message: PAM puts the reason on the lines after "pam_chauthtok() failed".
            text = (proc.stderr or "").replace(password, "***")
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            detail = " / ".join(lines) if lines else "no message"
            if len(detail) > _MAX_DETAIL:
                detail = detail[: _MAX_DETAIL - 1] + "…"
            raise SetterFailed(f"{self.command} exited with status {proc.returncode}: {detail}")


@dataclass(frozen=True)
class FileSetter:
    """Writes the password, and only the password (no newline), to ``path``, 0600, atomically."""

    path: Path

    @property
    def description(self) -> str:
        return f"file:{self.path}"

    def set(self, account: str, password: str) -> None:
        try:
            write_private(self.path, password.encode("utf-8"))
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            raise SetterFailed(f"could not write {self.path} ({why})") from None


def parse_setter(spec: str) -> Setter:
    """``chpasswd`` or ``file:PATH``."""
    if spec == "chpasswd":
        return ChpasswdSetter()
    if spec.startswith("file:"):
        path = spec[len("file:") :]
        if not path:
            raise BadInput("--setter file:PATH needs a path, for example file:/run/ams-agent/password")
        return FileSetter(Path(path).expanduser().absolute())
    raise BadInput(f"--setter {spec!r} is not known: use chpasswd or file:PATH")
