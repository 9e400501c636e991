"""The agent's side of the agent HTTP API (docs/agent-api.md), with bounded retries.

Network failures and busy answers (429, 502, 503, 504) are retried with exponential
backoff and jitter, a bounded number of times, with one log line per failure. A busy
answer's ``Retry-After`` is honoured: the next attempt waits at least that long, and one
that asks for more than the longest wait allowed (``--max-delay``) ends the request at
once, for the next run of the agent to try again. Log lines name the method, the path and
the failure; never a request header, so never the token, and never a request body.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from ams import __version__
from ams.errors import (
    AgentServerAnswerInvalid,
    AgentServerRefused,
    AgentServerUnreachable,
    BadInput,
)

__all__ = ["AgentClient", "Interrupted", "RetryPolicy", "normalise_server_url", "retry_after"]

log = logging.getLogger("ams.agent")

# Answers that mean "not now" rather than "no": a proxy between us and the service, or
# the service itself while its master key is locked.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class Interrupted(Exception):
    """A stop was requested while waiting to retry; nothing was sent since."""


@dataclass(frozen=True)
class RetryPolicy:
    """At most ``tries`` attempts; before attempt n+1 wait about ``base_delay * 2**n``
    seconds, capped at ``max_delay``, with "equal jitter" (half fixed, half random) so a
    fleet of agents that lost the server together does not come back in lock-step."""

    tries: int = 5
    base_delay: float = 1.0
    max_delay: float = 30.0
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.tries < 1:
            raise BadInput("--tries must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0:
            raise BadInput("retry delays cannot be negative")

    def delay(self, failures: int, rng: random.Random, asked: float | None = None) -> float:
        """The wait after the ``failures``-th failed attempt (1-based). ``asked``: the
        seconds the server's ``Retry-After`` asked for, at most ``max_delay`` (the caller
        gives up on more): the wait is then at least that, plus up to a quarter more so
        that the agents the server turned away together do not all come back at once."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** (failures - 1)))
        backoff = float(ceiling / 2 + rng.uniform(0, ceiling / 2))
        if asked is None:
            return backoff
        return max(backoff, min(self.max_delay, asked * rng.uniform(1.0, 1.25)))


def normalise_server_url(url: str) -> str:
    """``https://host[:port][/prefix]`` without a trailing slash; BadInput for anything else."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
        parts = None
    if (
        parts is None
        or not port_ok
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or parts.username
        or parts.password
    ):
        raise BadInput(
            f"--server {url!r} is not an http:// or https:// URL of an AMS server "
            "(for example https://ams.example.com)"
        )
    return text.rstrip("/")


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


class AgentClient:
    """One AMS server, seen by one agent. ``client`` may be given (tests pass an in-process
    ``TestClient``); otherwise an ``httpx.Client`` for ``server`` is made and owned."""

    def __init__(
        self,
        server: str,
        *,
        token: str | None = None,
        retry: RetryPolicy | None = None,
        client: httpx.Client | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
        stop: threading.Event | None = None,
    ) -> None:
        self.server = server
        self.retry = retry or RetryPolicy()
        self._token = token
        self._rng = rng or random.SystemRandom()
        self._sleep = sleep
        self._stop = stop
        self._owned = client is None
        self._http = client or httpx.Client(
            base_url=server,
            timeout=self.retry.timeout,
            follow_redirects=False,
            headers={"User-Agent": f"ams-agent/{__version__}"},
        )
        if urlsplit(server).scheme == "http" and not _is_loopback(server):
            log.warning(
                "the server address is plain http://: the device token and the check-ins travel "
                "unencrypted; use https:// (a TLS reverse proxy in front of `ams serve`)"
            )

    def close(self) -> None:
        if self._owned:
            self._http.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the four calls of the agent API ------------------------------------------------

    def register(
        self, registration_key: str, name: str, *, scope: str | None = None, dn: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"registration_key": registration_key, "name": name}
        if scope is not None:
            body["scope"] = scope
        if dn is not None:
            body["dn"] = dn
        answer = self._call(
            "POST",
            "/api/v1/agent/register",
            "the registration",
            json=body,
            authenticated=False,
            # Registering twice would make two devices and use the key twice.
            retry_on_ambiguous=False,
        )
        _need(answer, {"device_id": str, "token": str, "status": str})
        return answer

    def check(self, version: int | None) -> dict[str, Any]:
        return self._call(
            "GET",
            "/api/v1/agent/password",
            "the check-in",
            params={"version": "" if version is None else str(version)},
            interruptible=True,
        )

    def report(self, account: str, version: int, blob_b64: str) -> dict[str, Any]:
        # The server answers the very same report sent twice with its first answer, so a
        # report whose answer was lost is simply sent again. Should the retry be refused
        # anyway, the password is not set here, and the next check-in repairs the rest
        # (the server then holds a version the agent does not know: reason "rollback").
        answer = self._call(
            "POST",
            "/api/v1/agent/password",
            "the new password",
            json={"account": account, "version": version, "blob": blob_b64},
        )
        _need(answer, {"request_id": str})
        return answer

    def undo(self, request_id: str, *, deadline: float | None = None) -> dict[str, Any]:
        return self._call(
            "DELETE",
            f"/api/v1/agent/password/{request_id}",
            "the undo of the new password",
            deadline=deadline,
        )

    # -- one request, retried --------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        authenticated: bool = True,
        retry_on_ambiguous: bool = True,
        interruptible: bool = False,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self._token}"} if authenticated and self._token else {}
        tries = self.retry.tries
        for attempt in range(1, tries + 1):
            failure: str
            asked: float | None = None
            try:
                response = self._http.request(method, path, json=json, params=params, headers=headers)
            except httpx.TransportError as exc:
                sent = not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
                failure = f"{type(exc).__name__}: {_one_line(exc)}"
                if sent and not retry_on_ambiguous:
                    raise AgentServerUnreachable(
                        f"{what} to {self.server} failed after it may have been sent ({failure}); "
                        "nothing was changed on this device, and the next check-in sets things right"
                    ) from None
            else:
                if response.status_code in RETRY_STATUSES:
                    failure = f"HTTP {response.status_code} {_error_of(response)}".rstrip()
                    asked = retry_after(response.headers.get("retry-after"))
                    if asked is not None:
                        failure += f", Retry-After {asked:.0f} s"
                else:
                    return _answer(response, what, self.server)
            if attempt == tries or (deadline is not None and time.monotonic() >= deadline):
                raise AgentServerUnreachable(
                    f"{what} to {self.server} failed {attempt} time(s), the last with {failure}: "
                    "check the server address, that `ams serve` runs, and the network"
                )
            if asked is not None and asked > self.retry.max_delay and deadline is None:
                # Sooner would be refused again: the next run of the agent tries again. (An
                # undo, which has a deadline, keeps trying until then.)
                raise AgentServerUnreachable(
                    f"{what} to {self.server} failed with {failure}: the server asks to wait longer "
                    f"than --max-delay ({self.retry.max_delay:g} s) allows, so this run stops here; "
                    "the next run tries again (or raise --max-delay)"
                )
            wait = self.retry.delay(attempt, self._rng, asked)
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            log.warning(
                "%s %s failed (%s); try %d of %d in %.1f s", method, path, failure, attempt + 1, tries, wait
            )
            if interruptible and self._stop is not None:
                if self._stop.wait(wait):
                    raise Interrupted()
            else:
                self._sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """The seconds a ``Retry-After`` header asks for (RFC 9110: whole seconds, or an HTTP
    date); None when there is none or it is neither. A date in the past asks for 0."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", " ")
    return text or "no detail"


def _error_of(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    code = body.get("error") if isinstance(body, dict) else None
    return code if isinstance(code, str) else ""


def _answer(response: httpx.Response, what: str, server: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success:
        if not isinstance(body, dict):
            raise AgentServerAnswerInvalid(
                f"{server} answered {what} with HTTP {response.status_code} but no JSON object: "
                "is --server the address of an AMS server?"
            )
        return body
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message = str(body.get("message") or body["error"]).replace("\n", " ")
        raise AgentServerRefused(
            f"the server refused {what} (HTTP {response.status_code} {body['error']}): {message}"
        )
    raise AgentServerRefused(
        f"{server} refused {what} with HTTP {response.status_code} and no AMS error: "
        "is --server the address of an AMS server?"
    )


def _need(answer: dict[str, Any], fields: dict[str, type]) -> None:
    for key, kind in fields.items():
        if not isinstance(answer.get(key), kind) or not answer[key]:
            raise AgentServerAnswerInvalid(
                f"the server's answer lacks {key!r}: is the server an AMS of the same version?"
            )
