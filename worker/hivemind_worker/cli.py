"""`hivemind-worker`: run a worker, build the runtime image, check a machine.

hivemind-worker run --pool HOST:PORT --join-token-file FILE|- [--executor docker|local] ...
    (or HIVEMIND_WORKER_JOIN_TOKEN=T; --join-token T works too, but shows the token in `ps`)
hivemind-worker image build [--bootstrap] [--network host] [--ca-bundle FILE] [--if-missing]
hivemind-worker doctor [--pool HOST:PORT]
hivemind-worker env list [--json] | env prune [KEY ...] [--older-than DURATION]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from hivemind_nodepool.protocol import commandline
from hivemind_nodepool.protocol.environment import check_python_version, python_minor
from hivemind_nodepool.protocol.errors import InvalidInput
from hivemind_nodepool.protocol.units import parse_duration

from .settings import SCHEMA, WorkerSettings, load_settings

log = logging.getLogger(__name__)


def _settings_from(args: argparse.Namespace) -> WorkerSettings:
    if getattr(args, "join_token", None) is not None:
        log.warning("%s", FLAG_WARNING)
    return load_settings(args.config, SCHEMA.flag_values(args))


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="a TOML file with a [worker] table of settings")
    SCHEMA.add_flags(parser.add_argument_group("settings"))


TOKEN_ENV = SCHEMA.settings["join_token"].env
FLAG_WARNING = (
    "--join-token on the command line is visible to every local user (ps, /proc/PID/cmdline): "
    "pass the token with --join-token-file FILE, --join-token-file - (standard input) or the "
    f"{TOKEN_ENV} environment variable instead"
)


def read_join_token(settings: WorkerSettings, stdin: TextIO) -> str:
    """The join token: from --join-token-file (`-`: standard input) when given, else the setting
    (environment, config file or flag). Giving both ways is an error: which one counts is unclear."""
    source = settings.join_token_file
    if source is None:
        return settings.join_token
    if settings.join_token:
        raise InvalidInput(
            "the join token came twice: give --join-token-file or the join token itself, not both"
        )
    if str(source) == "-":
        text, where = stdin.readline(), "standard input"
    else:
        where = str(source)
        try:
            text = source.read_text()
            if source.stat().st_mode & 0o077:
                log.warning(
                    "the join token file %s is readable by other local accounts: chmod 600 it", source
                )
        except OSError as exc:
            raise InvalidInput(f"cannot read the join token file {source}: {exc.strerror}") from None
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise InvalidInput(f"no join token in {where}")
    return token


def cmd_run(args: argparse.Namespace) -> int:
    from .daemon import run_daemon

    settings = _settings_from(args)
    settings.join_token = read_join_token(settings, sys.stdin)
    for name in (TOKEN_ENV, SCHEMA.settings["join_token"].legacy_env):
        os.environ.pop(name, None)  # read once; nothing the worker starts inherits it
    return run_daemon(settings)


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import run_doctor

    settings = _settings_from(args)
    return run_doctor(settings)


def check_python(text: str) -> str:
    """'3.12' from '3.12' or '3.12.1'; InvalidInput otherwise."""
    return python_minor(check_python_version(text))


def cmd_env_list(args: argparse.Namespace) -> int:
    from .env_admin import list_environments

    return list_environments(_settings_from(args), args.json)


def cmd_env_prune(args: argparse.Namespace) -> int:
    from .env_admin import prune_environments

    older = parse_duration(args.older_than) if args.older_than else None
    return prune_environments(_settings_from(args), list(args.keys), older)


def _add_env_commands(commands: Any) -> None:
    env = commands.add_parser(
        "env",
        help="the task environments this worker built",
        description="The task environments in this worker's state dir (give the same --state-dir, "
        "--executor and --config as `run`).",
    )
    env_commands = env.add_subparsers(dest="env_command", metavar="COMMAND", required=True)
    listed = env_commands.add_parser(
        "list",
        help="each environment: key, size, last use, what it holds; failed ones too",
        description="List the environments and the builds that failed (which fail at once until pruned).",
    )
    _add_common(listed)
    listed.add_argument("--json", action="store_true", help="print JSON")
    listed.set_defaults(func=cmd_env_list)
    prune = env_commands.add_parser(
        "prune",
        help="remove environments no task uses, and forget failed builds",
        description="Remove environments no running task uses (all of them, those whose key starts "
        "with KEY, or those unused for --older-than), and forget failed builds the same way, so "
        "they are tried again.",
    )
    _add_common(prune)
    prune.add_argument(
        "keys", nargs="*", metavar="KEY", help="a key or the start of one, as `env list` shows"
    )
    prune.add_argument("--older-than", metavar="DURATION", help="only those unused this long, e.g. 7d")
    prune.set_defaults(func=cmd_env_prune)


def cmd_image_build(args: argparse.Namespace) -> int:
    from .image import BuildOptions, build_runtime

    options = BuildOptions(
        tag=args.tag or "",
        base_image=args.base_image or "",
        bootstrap=args.bootstrap,
        network=args.network,
        ca_bundle=Path(args.ca_bundle) if args.ca_bundle else None,
        if_missing=args.if_missing,
        mirror=args.mirror,
        python=check_python(args.python) if args.python else "",
    )
    build_runtime(options)
    return 0


def cmd_image_check(args: argparse.Namespace) -> int:
    from hivemind_worker.image import runtime_image_exists, runtime_tag

    tag = args.tag or runtime_tag()
    if runtime_image_exists(tag):
        print(f"the Docker engine answers and has {tag}")
        return 0
    print(f"no Docker engine with {tag} answers; `hivemind-worker image build` builds it")
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hivemind-worker",
        description="A HiveMind worker: joins a NodePool and runs its tasks with papermill, in "
        "locked-down Docker containers (or, when chosen, a local venv without isolation).",
    )
    commandline.add_common_options(parser, default_level="INFO")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run",
        help="join the pool and run tasks until stopped (SIGTERM drains)",
        description="Join the pool and run its tasks. SIGTERM drains: no new "
        "tasks, running ones get --drain-grace to finish, then go back to the pool. Each setting "
        "comes from its flag, else its HIVEMIND_WORKER_* variable, else the --config file's "
        "[worker] table, else the default.",
    )
    _add_common(run)
    run.set_defaults(func=cmd_run)

    doctor = commands.add_parser(
        "doctor",
        help="check Docker, the runtime image, GPUs and the pool",
        description="Check what this machine needs to be a worker and say what to fix.",
    )
    _add_common(doctor)
    doctor.set_defaults(func=cmd_doctor)

    image = commands.add_parser("image", help="the runtime image", description="The runtime image.")
    image_commands = image.add_subparsers(dest="image_command", metavar="COMMAND", required=True)
    build = image_commands.add_parser(
        "build",
        help="build the runtime image (papermill + ipykernel, non-root)",
        description="Build the runtime image from worker/hivemind_worker/runtime/Dockerfile.",
    )
    build.add_argument("--tag", help="the image tag (default: hivemind-runtime:<version>)")
    build.add_argument(
        "--base-image",
        help="the base image (default: python:3.12-slim, or the bootstrapped one with --bootstrap)",
    )
    build.add_argument(
        "--bootstrap",
        action="store_true",
        help="build the base from Debian packages with debootstrap (no registry needed)",
    )
    build.add_argument("--mirror", help="debootstrap's Debian mirror (default: debootstrap's own)")
    build.add_argument("--network", help="network mode of the build steps, e.g. host")
    build.add_argument("--ca-bundle", help="an extra CA bundle pip should trust during the build")
    build.add_argument("--if-missing", action="store_true", help="do nothing when the image exists")
    build.add_argument(
        "--python",
        metavar="X.Y",
        help="a runtime for another Python minor version, tagged hivemind-runtime:<version>-pyX.Y "
        "(base: --base-image, else python:X.Y-slim; --bootstrap gives only Debian's 3.11)",
    )
    build.set_defaults(func=cmd_image_build)
    check = image_commands.add_parser(
        "check",
        help="exit 0 when a Docker engine answers and has the runtime image, else 1",
        description="Say whether this machine can run the Docker executor now: a Docker engine "
        "answers and has the runtime image. Exits 0 when it can, 1 when it cannot.",
    )
    check.add_argument("--tag", help="the image tag (default: hivemind-runtime:<version>)")
    check.set_defaults(func=cmd_image_check)
    _add_env_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    return commandline.main(build_parser(), argv, quiet_loggers=("docker", "urllib3"))


if __name__ == "__main__":
    sys.exit(main())
