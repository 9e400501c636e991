"""ams.cli._runner: how `ams` and `ams-agent` turn every outcome into output and an exit status."""

from __future__ import annotations

from typing import Annotated

import pytest
import typer

from ams import __version__
from ams.cli._runner import DebugOption, run_app, version_callback
from ams.errors import NotFound

app = typer.Typer(
    name="demo",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
)


@app.callback()
def root(
    debug: DebugOption = False,
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback("demo"), is_eager=True)
    ] = False,
) -> None:
    del debug, version


@app.command()
def fail(how: Annotated[str, typer.Argument()]) -> None:
    if how == "ams":
        raise NotFound("no such thing: create it first")
    if how == "bug":
        raise ZeroDivisionError
    if how == "declined":
        raise typer.Abort  # what typer.confirm raises on "no"


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AMS_DEBUG", raising=False)


@pytest.mark.parametrize(
    ("args", "status", "stderr"),
    [
        (["fail", "ams"], NotFound.exit_status, "error: no such thing: create it first\n"),
        (
            ["fail", "bug"],
            1,
            "error: internal error (ZeroDivisionError); run again with --debug to see where, and report it\n",
        ),
        (["fail", "declined"], 130, "error: interrupted; nothing more was done\n"),
        (["fail"], 2, "error: Missing argument 'how'. (see `demo fail --help`)\n"),
        (["--nope"], 2, "error: No such option: --nope (see `demo --help`)\n"),
    ],
)
def test_every_failure_is_one_error_line_and_its_status(
    capsys: pytest.CaptureFixture[str], args: list[str], status: int, stderr: str
) -> None:
    assert run_app(app, "demo", args) == status
    assert capsys.readouterr().err == stderr


def test_a_bare_group_prints_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_app(app, "demo", []) == 0
    out = capsys.readouterr()
    assert out.out.startswith("Usage: demo") and out.err == ""


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_app(app, "demo", ["--version"]) == 0
    assert capsys.readouterr().out == f"demo {__version__}\n"


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_adds_the_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    args = ["fail", "ams"]
    if how == "flag":
        args.insert(0, "--debug")
    else:
        monkeypatch.setenv("AMS_DEBUG", "1")
    assert run_app(app, "demo", args) == NotFound.exit_status
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("error: no such thing: create it first\n")
