"""The ``ams-agent`` command: ``register`` once, then ``run`` (on an interval, or ``--once``)."""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from ams.agent.client import AgentClient, Interrupted, RetryPolicy, normalise_server_url
from ams.agent.directory import LdapObjectClient, check_ldap_url, directory_check_in
from ams.agent.rotation import check_in
from ams.agent.setters import Setter, parse_setter, valid_account
from ams.agent.state import DEFAULT_STATE, AgentState, check_state_folder, exclusive, load_state, save_state
from ams.cli._runner import DebugOption, debug_requested, run_app, version_callback
from ams.errors import AlreadyExists, AMSError, BadInput
from ams.paths import check_new_file

__all__ = ["app", "main", "run"]

log = logging.getLogger("ams.agent")

app = typer.Typer(
    name="ams-agent",
    help="The AMS agent: registers this device with an AMS server and rotates its administrator password.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
)

_debug = False

StateOption = Annotated[
    Path,
    typer.Option("--state", help="The agent's state file (token, device id, last version); kept 0600."),
]
TriesOption = Annotated[
    int, typer.Option("--tries", min=1, max=100, help="Attempts per request when the network fails.")
]
MaxDelayOption = Annotated[
    float,
    typer.Option("--max-delay", min=0, max=3600, help="Longest wait, in seconds, between two attempts."),
]


@app.callback()
def root(
    debug: DebugOption = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            callback=version_callback("ams-agent"),
            is_eager=True,
            help="Print the version.",
        ),
    ] = False,
) -> None:
    global _debug
    _debug = _debug or debug


def _retry(tries: int, max_delay: float) -> RetryPolicy:
    return RetryPolicy(tries=tries, base_delay=min(1.0, max_delay), max_delay=max_delay)


def _registration_key(key: str | None, from_stdin: bool) -> str:
    if (key is None) == (not from_stdin):
        raise BadInput(
            "give the registration key with --registration-key-stdin (preferred: keys are secrets) "
            "or --registration-key, exactly one of them"
        )
    key = sys.stdin.readline().strip() if from_stdin else (key or "").strip()
    if not key:
        where = "on standard input: send it as the first line" if from_stdin else "given"
        raise BadInput(f"no registration key {where}")
    if "." not in key or any(c.isspace() for c in key):
        raise BadInput(
            "the registration key is not of the form <id>.<secret>: copy it whole from `ams regkey create`"
        )
    return key


@app.command()
def register(
    server: Annotated[
        str, typer.Option("--server", help="The AMS server's address, e.g. https://ams.example.com.")
    ],
    registration_key: Annotated[
        str | None,
        typer.Option(
            "--registration-key",
            help="The registration key (visible in `ps`: prefer --registration-key-stdin).",
        ),
    ] = None,
    registration_key_stdin: Annotated[
        bool,
        typer.Option("--registration-key-stdin", help="Read the registration key from standard input."),
    ] = False,
    token_stdin: Annotated[
        bool,
        typer.Option(
            "--token-stdin",
            help="Read the device token that `ams device register` printed from standard input "
            "(a device an administrator registered; with --directory and --dn).",
        ),
    ] = False,
    directory: Annotated[
        str | None,
        typer.Option(
            "--directory", help="Directory mode: the directory (d-…) holding this computer's object."
        ),
    ] = None,
    dn: Annotated[
        str | None, typer.Option("--dn", help="Directory mode: the DN of this computer's object.")
    ] = None,
    ldap_url: Annotated[
        str | None,
        typer.Option("--ldap-url", help="Directory mode: the directory's LDAP address, ldap[s]://host:port."),
    ] = None,
    state_path: StateOption = DEFAULT_STATE,
    name: Annotated[
        str | None, typer.Option("--name", help="The device's name on the server (default: host name).")
    ] = None,
    tries: TriesOption = 5,
    max_delay: MaxDelayOption = 30.0,
) -> None:
    """Register this device with the AMS server and save its credentials in the state file."""
    url = normalise_server_url(server)
    if (directory is None) != (dn is None):
        raise BadInput("directory mode needs both --directory d-… and --dn DN (or neither)")
    if ldap_url is not None:
        ldap_url = check_ldap_url(ldap_url)
    if token_stdin:
        if registration_key is not None or registration_key_stdin or directory is None:
            raise BadInput(
                "--token-stdin takes the token of a device an administrator registered with "
                "`ams device register`: give it with --directory and --dn, and no registration key"
            )
        token = sys.stdin.readline().strip()
        if not token.startswith("dev_") or "." not in token or any(c.isspace() for c in token):
            raise BadInput("the device token is not of the form dev_<id>.<secret>: copy it whole")
        key = None
    else:
        key = _registration_key(registration_key, registration_key_stdin)
    device_name = (name if name is not None else socket.gethostname()).strip()
    if not device_name:
        raise BadInput("--name cannot be empty")
    already = AlreadyExists(
        f"this agent is already registered (state in {state_path}): to register again, "
        "move that file away first, or pass another --state"
    )
    if state_path.exists() and not state_path.is_dir():
        raise already
    # Where the state goes is checked before the server hands out a device (and uses up an
    # activation of the key) that could not be saved.
    check_new_file(state_path, "--state", example="state.json", force=True, makes_folders=True)
    check_state_folder(state_path)  # a folder open to others would expose the token
    if key is not None:
        with AgentClient(url, retry=_retry(tries, max_delay)) as client:
            answer = client.register(key, device_name, scope=directory, dn=dn)
    else:
        with AgentClient(url, token=token, retry=_retry(tries, max_delay)) as client:
            client.check(None)  # proves the token before it is saved
        answer = {"device_id": token.partition(".")[0], "token": token, "status": "active"}
    state = AgentState(
        server=url,
        device_id=answer["device_id"],
        token=answer["token"],
        name=device_name,
        registered_at=datetime.now(UTC).isoformat(timespec="seconds"),
        directory_id=directory,
        dn=dn,
        ldap_url=ldap_url,
    )
    # Nothing is written before the server said yes; an existing state is never replaced.
    if not save_state(state_path, state, replace=False):
        raise already
    status = answer["status"]
    typer.echo(f"registered {device_name} as {state.device_id} (status: {status}); state in {state_path}")
    if status == "pending":
        typer.echo(f"the device waits for approval: run `ams device approve {state.device_id}` on the server")


class _Stop:
    """SIGTERM and SIGINT end the loop after the check-in in progress, never in its middle."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.received = "a signal"

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        # Only set a flag here: logging from a signal handler could interleave with a log
        # line being written by the code it interrupted.
        self.received = signal.Signals(signum).name
        self.event.set()


@dataclass(frozen=True)
class _Mode:
    """Directory mode's settings (None: the agent API mode)."""

    ldap_url: str
    ca_file: Path | None


def _one(
    state_path: Path,
    setter: Setter,
    account: str | None,
    retry: RetryPolicy,
    stop: threading.Event | None,
    mode: _Mode | None = None,
) -> None:
    state = load_state(state_path)
    with AgentClient(state.server, token=state.token, retry=retry, stop=stop) as client:
        if mode is None:
            result = check_in(state, state_path, client, setter, account=account)
        else:
            if state.dn is None:
                raise BadInput(
                    f"the agent state {state_path} has no computer object: register with --directory "
                    "and --dn to use --mode directory"
                )
            with LdapObjectClient(mode.ldap_url, state.dn, state.token, ca_file=mode.ca_file) as ldap:
                result = directory_check_in(state, state_path, client, ldap, setter, account=account)
    log.info("%s", result.describe())


def _mode(name: str, ldap_url: str | None, ca_file: Path | None, state_path: Path) -> _Mode | None:
    if name == "agent":
        return None
    if name != "directory":
        raise BadInput(f"--mode {name!r} is not known: use agent (the default) or directory")
    state = load_state(state_path)
    url = ldap_url or state.ldap_url
    if state.dn is None or url is None:
        raise BadInput(
            "--mode directory needs a device registered with --directory and --dn, and the "
            "directory's LDAP address (--ldap-url, here or at registration)"
        )
    return _Mode(check_ldap_url(url), ca_file)


@app.command("run")
def run_(
    once: Annotated[bool, typer.Option("--once", help="Check in once and exit.")] = False,
    state_path: StateOption = DEFAULT_STATE,
    interval: Annotated[
        float, typer.Option("--interval", min=1, help="Seconds between check-ins (without --once).")
    ] = 3600.0,
    setter_spec: Annotated[
        str, typer.Option("--setter", help="How to set the password: chpasswd, or file:PATH.")
    ] = "chpasswd",
    account: Annotated[
        str | None,
        typer.Option("--account", help="The account whose password rotates (default: the server's policy)."),
    ] = None,
    mode_name: Annotated[
        str,
        typer.Option(
            "--mode",
            help="agent: the password goes to the AMS server (default); directory: onto this "
            "computer's object in its directory, over LDAP (legacy agents).",
        ),
    ] = "agent",
    ldap_url: Annotated[
        str | None,
        typer.Option("--ldap-url", help="Directory mode: the LDAP address (default: the state's)."),
    ] = None,
    ldap_ca: Annotated[
        Path | None, typer.Option("--ldap-ca", help="Directory mode: CA certificates (PEM) for ldaps://.")
    ] = None,
    tries: TriesOption = 5,
    max_delay: MaxDelayOption = 30.0,
) -> None:
    """Check in with the server and rotate the password when it asks; every --interval seconds."""
    setter = parse_setter(setter_spec)
    if account is not None and not valid_account(account):
        raise BadInput(f"--account {account!r} is not an account name: 1-64 characters, no colon or space")
    retry = _retry(tries, max_delay)
    load_state(state_path)  # a missing or broken state is a mistake to report now, not in a loop
    mode = _mode(mode_name, ldap_url, ldap_ca, state_path)
    with exclusive(state_path):
        if once:
            _one(state_path, setter, account, retry, None, mode)
            return
        stop = _Stop()
        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            log.info("checking in every %g s with %s; SIGTERM or Ctrl-C stops", interval, setter.description)
            while not stop.event.is_set():
                started = time.monotonic()
                try:
                    _one(state_path, setter, account, retry, stop.event, mode)
                except Interrupted:
                    break
                except AMSError as exc:
                    log.error("%s", exc.message)
                except Exception as exc:  # noqa: BLE001 - a device agent keeps going; the next check-in may work
                    log.error(
                        "internal error (%s); run with --debug to see where, and report it",
                        type(exc).__name__,
                    )
                    if _debug:
                        traceback.print_exc()
                stop.event.wait(max(0.0, interval - (time.monotonic() - started)))
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        log.info("%s received: stopped", stop.received)


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)s ams-agent %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    # httpx logs every request at INFO; our own lines say what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def run(argv: list[str] | None = None) -> int:
    """Run ``ams-agent`` with ``argv``; return the exit status instead of exiting."""
    global _debug
    args = list(sys.argv[1:] if argv is None else argv)
    _debug = debug_requested(args)  # the run loop logs and goes on; --debug adds the traceback
    _configure_logging()
    return run_app(app, "ams-agent", args)


def main() -> None:
    sys.exit(run())
