"""The worker's settings, each declared once: defaults < TOML file (--config, [worker] table) <
HIVEMIND_WORKER_* environment < flags of `hivemind-worker run` and `doctor`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hivemind_nodepool.client.submission import parse_labels
from hivemind_nodepool.protocol.environment import check_image
from hivemind_nodepool.protocol.errors import InvalidInput
from hivemind_nodepool.protocol.layered_settings import (
    BOOL,
    DURATION,
    FLOAT,
    INT,
    PATH,
    SIZE,
    TEXT_LIST,
    Kind,
    SettingsSchema,
    setting,
)

from .redaction import redact_url


def default_state_dir() -> Path:
    """Where the worker keeps its identity, bundle cache and environments."""
    if os.geteuid() == 0:
        return Path("/var/lib/hivemind-worker")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "hivemind-worker"


def default_uv_cache() -> Path:
    """The package cache every environment build on this machine shares (uv locks it itself)."""
    if os.geteuid() == 0:
        return Path("/var/cache/hivemind/uv")
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hivemind" / "uv"


def default_image() -> str:
    from .image import runtime_tag  # lazily: the image module imports the Docker SDK

    return runtime_tag()


def _read_labels(value: Any) -> dict[str, str]:
    """{'gpu': 'a100', 'room': '2'} from 'gpu=a100,room=2' (or a TOML table)."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    return parse_labels([str(value)])


def _show_labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items())


LABELS = Kind("labels", "K=V,...", _read_labels, _show_labels)


@dataclass
class WorkerSettings:
    pool: str = setting("", metavar="HOST:PORT", help="the pool's address")
    join_token: str = setting(
        "",
        metavar="TOKEN",
        help="the admin's join token, needed for the first join only. AVOID THE FLAG: every local "
        "user sees it in `ps`; set HIVEMIND_WORKER_JOIN_TOKEN or use --join-token-file",
    )
    join_token_file: Path | None = setting(
        None,
        kind=PATH,
        help="read the join token from this file (keep it 0600), or from standard input with `-`",
    )
    name: str = setting("", metavar="NAME", help="the name shown in the pool", shown_default="the hostname")
    executor: str = setting(
        "docker",
        choices=("docker", "local"),
        help="`docker`: locked-down containers; `local`: a venv with NO isolation",
    )
    state_dir: Path = setting(
        kind=PATH,
        default_factory=default_state_dir,
        help="where the identity, caches and task folders live",
        shown_default="`/var/lib/hivemind-worker` (root), `~/.local/state/hivemind-worker`",
    )
    ca: Path | None = setting(None, kind=PATH, help="the pool's CA certificate (TLS)")
    insecure: bool = setting(False, kind=BOOL, help="allow plaintext gRPC off loopback")
    labels: dict[str, str] = setting(
        kind=LABELS, default_factory=dict, help="labels tasks can ask for, `k=v,k2=v2`"
    )
    max_cpus: float = setting(
        0.0, kind=FLOAT, help="cores the pool may use; 0: all", shown_default="all cores"
    )
    max_memory: int = setting(
        0, kind=SIZE, help="memory the pool may use; 0: all", shown_default="all memory"
    )
    max_gpus: int = setting(
        -1, kind=INT, help="GPUs the pool may use; -1: every GPU found", shown_default="all GPUs found"
    )
    image: str = setting(
        default_factory=default_image,
        metavar="IMAGE",
        help="the runtime image",
        shown_default="`hivemind-runtime:<version>`",
    )
    heartbeat_interval: float = setting(
        3.0, kind=DURATION, help="time between heartbeats (the pool's, if shorter)"
    )
    drain_grace: float = setting(
        60.0, kind=DURATION, help="on SIGTERM, how long running tasks may finish before they go back"
    )
    default_timeout: float = setting(
        6 * 3600.0, kind=DURATION, help="a task's timeout when its assignment carries none"
    )
    default_memory: int = setting(2 * 1024**3, kind=SIZE, help="a task's memory limit when it asks for none")
    pids_limit: int = setting(512, kind=INT, help="processes per task container (16 or more)")
    tmpfs_size: int = setting(
        0,
        kind=SIZE,
        help="a RAM tmpfs of this size on a task container's `/tmp`; 0: `/tmp` is on the task's disk",
        shown_default="0 (`/tmp` counts in `--task-disk`)",
    )
    task_disk: int = setting(
        0,
        kind=SIZE,
        help="disk one task may use for its files, outputs and `/tmp`; a task may ask for less (`--disk`)",
        shown_default="min(20 GiB, a quarter of the state dir's free space)",
    )
    task_disk_enforce: str = setting(
        "auto",
        choices=("auto", "mount", "monitor"),
        help="`mount`: a size-limited filesystem per task (root); `monitor`: measured every second; "
        "`auto`: mount where it can",
    )
    env_cache_size: int = setting(
        20 * 1024**3, kind=SIZE, help="task environments kept; least recently used are evicted past it"
    )
    bundle_cache_size: int = setting(
        5 * 1024**3, kind=SIZE, help="bundles kept; least recently used are evicted past it"
    )
    max_output_bytes: int = setting(
        16 * 1024**2, kind=SIZE, help="live output per task; past it a NOTICE says it was truncated"
    )
    max_result_bytes: int = setting(1024**3, kind=SIZE, help="the largest result ZIP")
    build_network: str | None = setting(
        None, metavar="MODE", help="network mode for environment builds, e.g. `host`"
    )
    build_ca_bundle: Path | None = setting(
        None, kind=PATH, help="an extra CA bundle mounted into environment builds"
    )
    index_url: str = setting(
        "",
        metavar="URL",
        help="the package index environments are built from (a lab's index or mirror); credentials "
        "in it (`https://user:secret@host/simple`) never reach logs, events or `ps`",
        shown_default="the index the machine's pip and uv use",
    )
    extra_index_url: list[str] = setting(
        kind=TEXT_LIST, default_factory=list, metavar="URL", help="more indexes, after --index-url"
    )
    find_links: Path | None = setting(
        None,
        kind=PATH,
        help="a folder of wheels (a wheelhouse) environments may install from; mounted read-only into builds",
    )
    offline: bool = setting(
        False,
        kind=BOOL,
        help="build environments from the package cache and --find-links only (air-gapped labs)",
    )
    uv_cache: Path = setting(
        kind=PATH,
        default_factory=default_uv_cache,
        help="the package cache shared by every environment build and every worker on this machine",
        shown_default="`/var/cache/hivemind/uv` (root), `~/.cache/hivemind/uv`",
    )
    allow_image: list[str] = setting(
        kind=TEXT_LIST,
        default_factory=list,
        metavar="IMAGE",
        help="an image tasks may ask for with --image (it must be on this machine's Docker engine)",
    )
    keep_attempts: bool = setting(False, kind=BOOL, help="keep attempt folders after upload (for debugging)")
    task_network: str = setting(
        "bridge",
        metavar="NETWORK",
        help="the Docker network for tasks the pool allows network; never the host's",
    )

    def validate(self) -> None:
        if self.max_cpus < 0 or self.max_memory < 0:
            raise InvalidInput("--max-cpus and --max-memory cannot be negative")
        if self.heartbeat_interval <= 0 or self.drain_grace < 0:
            raise InvalidInput("the heartbeat interval must be positive and the drain grace not negative")
        if self.task_disk < 0 or self.tmpfs_size < 0:
            raise InvalidInput("--task-disk and --tmpfs-size cannot be negative")
        if 0 < self.task_disk < 1024**2:
            raise InvalidInput("--task-disk must be at least 1M (0: the default)")
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
        self._validate_environments()

    def _validate_environments(self) -> None:
        for url in [self.index_url, *self.extra_index_url]:
            if url and not url.startswith(("http://", "https://", "file://")):
                raise InvalidInput(
                    f"--index-url and --extra-index-url take http(s) URLs, not {redact_url(url)!r}"
                )
        if self.find_links is not None and not self.find_links.is_dir():
            raise InvalidInput(f"--find-links {self.find_links}: not a folder of wheels")
        for image in self.allow_image:
            check_image(image)


SCHEMA = SettingsSchema(WorkerSettings, table="worker", env_prefix="HIVEMIND_WORKER_")


def load_settings(
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> WorkerSettings:
    """The worker's settings with every layer applied (the file's [worker] table)."""
    return SCHEMA.load(config_file, overrides, environ)
