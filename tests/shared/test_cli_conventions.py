"""The three command lines share --version, -v/--log-level and the exit codes 0, 1 and 2."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hivemind_nodepool import __version__
from hivemind_nodepool.cli import admin, user
from hivemind_nodepool.protocol import commandline
from hivemind_worker import cli as worker

CLIS = {
    "hivemind": "hivemind_nodepool.cli.user",
    "hivemind-nodepool": "hivemind_nodepool.cli.admin",
    "hivemind-worker": "hivemind_worker.cli",
}


def _run(module: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVEMIND_")}
    env["HIVEMIND_CONFIG_DIR"] = str(tmp_path / "config")  # no saved sign-in
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
        check=False,
    )


@pytest.mark.parametrize("prog", list(CLIS))
def test_version(prog: str, tmp_path: Path) -> None:
    result = _run(CLIS[prog], "--version", tmp_path=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == f"{prog} {__version__}"


# A command that fails with an error (1), and one the parser refuses (2), for each program.
ERRORS = {
    "hivemind": ["whoami"],  # not signed in
    "hivemind-nodepool": ["user", "list", "--data-dir", "nowhere"],  # no pool data there
    "hivemind-worker": ["run", "--config", "missing.toml"],  # no such file
}
USAGE = {
    "hivemind": ["submit"],  # no PATH
    "hivemind-nodepool": ["serve", "--retention", "forever"],  # not a duration
    "hivemind-worker": ["run", "--max-memory", "lots"],  # not a size
}


@pytest.mark.parametrize("prog", list(CLIS))
def test_an_error_exits_1_in_one_line(prog: str, tmp_path: Path) -> None:
    result = _run(CLIS[prog], *ERRORS[prog], tmp_path=tmp_path)
    assert result.returncode == commandline.EXIT_ERROR, result.stderr
    assert result.stderr.startswith(f"{prog}: error: ") and "Traceback" not in result.stderr


@pytest.mark.parametrize("prog", list(CLIS))
def test_a_usage_error_exits_2(prog: str, tmp_path: Path) -> None:
    for args in (USAGE[prog], ["--no-such-flag"], ["-v", "--log-level", "INFO", *ERRORS[prog]]):
        result = _run(CLIS[prog], *args, tmp_path=tmp_path)
        assert result.returncode == commandline.EXIT_USAGE, (args, result.stderr)
        assert f"usage: {prog}" in result.stderr


@pytest.mark.parametrize("parser", [user.build_parser(), admin.build_parser(), worker.build_parser()])
def test_the_same_logging_options_and_dispatch(parser: argparse.ArgumentParser) -> None:
    assert parser.parse_args(["-v", *_any_command(parser)]).log_level == "DEBUG"
    assert parser.parse_args(["--verbose", *_any_command(parser)]).log_level == "DEBUG"
    assert parser.parse_args(["--log-level", "warning", *_any_command(parser)]).log_level == "WARNING"
    for args in _every_command(parser):
        assert callable(parser.parse_args(args).func), args


def _every_command(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[list[str]]:
    """Each leaf command's words with the positional arguments it needs, filled with 'x'."""
    found: list[list[str]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _every_command(sub, (*prefix, name))
            return found
    needed = []
    for action in parser._actions:
        if action.required and action.option_strings:
            needed += [action.option_strings[0], "x"]
        elif not action.option_strings and action.nargs is None:
            needed.append("x")
    return [[*prefix, *needed]]


def _any_command(parser: argparse.ArgumentParser) -> list[str]:
    return _every_command(parser)[0]
