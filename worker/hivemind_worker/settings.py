"""The worker's settings: defaults < TOML file (--config, section [worker]) < HIVEMIND_* env < flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hivemind_nodepool.client.submission import parse_labels
from hivemind_nodepool.protocol.errors import InvalidInput
from hivemind_nodepool.protocol.layered_settings import FieldKinds, load_layers

from .image import runtime_tag


def default_state_dir() -> Path:
    """Where the worker keeps its identity, bundle cache and environments."""
    if os.geteuid() == 0:
        return Path("/var/lib/hivemind-worker")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "hivemind-worker"


@dataclass
class WorkerSettings:
    pool: str = ""
    join_token: str = ""
    name: str = ""  # the display name; default: the hostname
    executor: str = "docker"  # "docker" or "local"
    state_dir: Path = field(default_factory=default_state_dir)
    ca: Path | None = None  # the pool's CA certificate, for TLS
    insecure: bool = False  # allow plaintext off loopback
    labels: dict[str, str] = field(default_factory=dict)
    max_cpus: float = 0.0  # 0: every core
    max_memory: int = 0  # 0: all memory
    max_gpus: int = -1  # -1: every GPU found
    image: str = field(default_factory=runtime_tag)
    heartbeat_interval: float = 3.0
    drain_grace: float = 60.0  # how long running tasks may finish after SIGTERM
    default_timeout: float = 6 * 3600.0  # when an assignment carries none
    default_memory: int = 2 * 1024**3  # a task's memory limit when it asks for none
    pids_limit: int = 512
    tmpfs_size: int = 1024**3
    env_cache_size: int = 20 * 1024**3  # task environments kept, least recently used evicted
    bundle_cache_size: int = 5 * 1024**3
    max_output_bytes: int = 16 * 1024**2  # live output per task before it is truncated
    max_result_bytes: int = 1024**3
    build_network: str | None = None  # network mode for environment builds, e.g. "host"
    build_ca_bundle: Path | None = None  # extra CA bundle mounted into environment builds
    keep_attempts: bool = False  # keep attempt folders after upload (debugging)
    task_network: str = "bridge"  # Docker network for tasks the pool allows network

    def validate(self) -> None:
        if self.executor not in ("docker", "local"):
            raise InvalidInput(f"unknown executor {self.executor!r}: choose docker or local")
        if self.max_cpus < 0 or self.max_memory < 0:
            raise InvalidInput("--max-cpus and --max-memory cannot be negative")
        if self.heartbeat_interval <= 0 or self.drain_grace < 0:
            raise InvalidInput("the heartbeat interval must be positive and the drain grace not negative")
        if self.pids_limit < 16:
            raise InvalidInput("the pids limit must be at least 16")
        if self.task_network in ("host", "none", "") or self.task_network.startswith("container:"):
            raise InvalidInput(
                f"task_network {self.task_network!r}: name a Docker network made for "
                "tasks (docker network create hivemind-tasks); tasks never get the "
                "host's network"
            )
        for key in self.labels:
            if not key or "=" in key or "," in key:
                raise InvalidInput(f"bad label name {key!r}")


def _labels(value: str | dict[str, Any]) -> dict[str, str]:
    """{'gpu': 'a100', 'room': '2'} from 'gpu=a100,room=2' (or a TOML table)."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    return parse_labels([value])


KINDS = FieldKinds(
    durations=frozenset({"heartbeat_interval", "drain_grace", "default_timeout"}),
    sizes=frozenset(
        {
            "max_memory",
            "default_memory",
            "tmpfs_size",
            "env_cache_size",
            "bundle_cache_size",
            "max_output_bytes",
            "max_result_bytes",
        }
    ),
    paths=frozenset({"state_dir", "ca", "build_ca_bundle"}),
    bools=frozenset({"insecure", "keep_attempts"}),
    floats=frozenset({"max_cpus"}),
    ints=frozenset({"max_gpus", "pids_limit"}),
    custom={"labels": _labels},
)


def load_settings(
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> WorkerSettings:
    """The worker's settings with every layer applied (the file's [worker] table)."""
    return load_layers(
        WorkerSettings, "worker", KINDS, config_file=config_file, overrides=overrides, environ=environ
    )
