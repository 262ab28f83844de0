"""`hivemind-worker`: run a worker, build the runtime image, check a machine.

hivemind-worker run --pool HOST:PORT --join-token T [--executor docker|local] ...
hivemind-worker image build [--bootstrap] [--network host] [--ca-bundle FILE] [--if-missing]
hivemind-worker doctor [--pool HOST:PORT]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from hivemind_nodepool.protocol.errors import HiveMindError

from . import __version__

log = logging.getLogger(__name__)


def _settings_from(args: argparse.Namespace) -> Any:
    from .settings import load_settings

    overrides = {
        "pool": args.pool,
        "join_token": args.join_token,
        "executor": args.executor,
        "state_dir": args.state_dir,
        "ca": args.ca,
        "labels": args.labels,
        "name": args.name,
        "max_cpus": args.max_cpus,
        "max_memory": args.max_memory,
        "max_gpus": args.max_gpus,
        "image": args.image,
        "heartbeat_interval": args.heartbeat_interval,
        "drain_grace": args.drain_grace,
        "build_network": args.build_network,
        "build_ca_bundle": args.build_ca_bundle,
        "task_network": args.task_network,
        "insecure": True if args.insecure else None,
    }
    return load_settings(args.config, overrides)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="a TOML file with a [worker] table of settings")
    parser.add_argument("--pool", help="the pool's address, HOST:PORT")
    parser.add_argument("--join-token", help="the admin's join token (only needed to join the first time)")
    parser.add_argument(
        "--executor",
        choices=["docker", "local"],
        help="docker (default): locked-down containers; local: a venv, NO isolation",
    )
    parser.add_argument("--state-dir", help="where the identity, caches and task folders live")
    parser.add_argument("--ca", help="the pool's CA certificate (TLS)")
    parser.add_argument("--insecure", action="store_true", help="allow plaintext gRPC off loopback")
    parser.add_argument("--labels", help="labels tasks can ask for, k=v,k2=v2")
    parser.add_argument("--name", help="the name shown in the pool (default: the hostname)")
    parser.add_argument("--max-cpus", help="cores the pool may use (default: all)")
    parser.add_argument("--max-memory", help="memory the pool may use, e.g. 16G (default: all)")
    parser.add_argument("--max-gpus", help="GPUs the pool may use (default: all found)")
    parser.add_argument("--image", help="the runtime image (default: hivemind-runtime:<version>)")
    parser.add_argument("--heartbeat-interval", help="seconds between heartbeats (default 3)")
    parser.add_argument("--drain-grace", help="how long running tasks may finish on SIGTERM (default 60s)")
    parser.add_argument("--build-network", help="network mode for environment builds, e.g. host")
    parser.add_argument("--build-ca-bundle", help="CA bundle mounted into environment builds")
    parser.add_argument(
        "--task-network",
        help="the Docker network for tasks the pool allows network (default: bridge; never the host's)",
    )


def cmd_run(args: argparse.Namespace) -> int:
    from .daemon import run_daemon

    return run_daemon(_settings_from(args))


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import run_doctor

    settings = _settings_from(args)
    return run_doctor(settings)


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
    parser.add_argument("--version", action="version", version=f"hivemind-worker {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run",
        help="join the pool and run tasks until stopped (SIGTERM drains)",
        description="Join the pool and run its tasks. SIGTERM drains: no new "
        "tasks, running ones get --drain-grace to finish, then go back to the pool.",
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
    build.set_defaults(func=cmd_image_build)
    check = image_commands.add_parser(
        "check",
        help="exit 0 when a Docker engine answers and has the runtime image, else 1",
        description="Say whether this machine can run the Docker executor now: a Docker engine "
        "answers and has the runtime image. Exits 0 when it can, 1 when it cannot.",
    )
    check.add_argument("--tag", help="the image tag (default: hivemind-runtime:<version>)")
    check.set_defaults(func=cmd_image_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("docker").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except HiveMindError as exc:
        print(f"hivemind-worker: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
