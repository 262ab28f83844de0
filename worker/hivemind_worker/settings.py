"""The worker's settings: defaults < TOML file (--config, section [worker]) < HIVEMIND_* env < flags."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hivemind_nodepool.errors import InvalidInput
from hivemind_nodepool.units import parse_duration, parse_size

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
    name: str = ""                          # the display name; default: the hostname
    executor: str = "docker"                # "docker" or "local"
    state_dir: Path = field(default_factory=default_state_dir)
    ca: Path | None = None                  # the pool's CA certificate, for TLS
    insecure: bool = False                  # allow plaintext off loopback
    labels: dict[str, str] = field(default_factory=dict)
    max_cpus: float = 0.0                   # 0: every core
    max_memory: int = 0                     # 0: all memory
    max_gpus: int = -1                      # -1: every GPU found
    image: str = field(default_factory=runtime_tag)
    heartbeat_interval: float = 3.0
    drain_grace: float = 60.0               # how long running tasks may finish after SIGTERM
    default_timeout: float = 6 * 3600.0     # when an assignment carries none
    default_memory: int = 2 * 1024**3       # a task's memory limit when it asks for none
    pids_limit: int = 512
    tmpfs_size: int = 1024**3
    env_cache_size: int = 20 * 1024**3      # task environments kept, least recently used evicted
    bundle_cache_size: int = 5 * 1024**3
    max_output_bytes: int = 16 * 1024**2    # live output per task before it is truncated
    max_result_bytes: int = 1024**3
    build_network: str | None = None        # network mode for environment builds, e.g. "host"
    build_ca_bundle: Path | None = None     # extra CA bundle mounted into environment builds
    keep_attempts: bool = False             # keep attempt folders after upload (debugging)
    task_network: str = "bridge"            # Docker network for tasks the pool allows network


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
            raise InvalidInput(f"task_network {self.task_network!r}: name a Docker network made for "
                               "tasks (docker network create hivemind-tasks); tasks never get the "
                               "host's network")
        for key in self.labels:
            if not key or "=" in key or "," in key:
                raise InvalidInput(f"bad label name {key!r}")


_DURATIONS = {"heartbeat_interval", "drain_grace", "default_timeout"}
_SIZES = {"max_memory", "default_memory", "tmpfs_size", "env_cache_size", "bundle_cache_size",
          "max_output_bytes", "max_result_bytes"}
_PATHS = {"state_dir", "ca", "build_ca_bundle"}
_BOOLS = {"insecure", "keep_attempts"}
_FLOATS = {"max_cpus"}
_INTS = {"max_gpus", "pids_limit"}


def parse_labels(value: str | dict[str, Any]) -> dict[str, str]:
    """{'gpu': 'a100', 'room': '2'} from 'gpu=a100,room=2' (or a TOML table)."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"bad label {item!r}: write key=value")
        labels[key.strip()] = val.strip()
    return labels


def _convert(name: str, value: Any) -> Any:
    try:
        if name == "labels":
            return parse_labels(value)
        if name in _DURATIONS:
            return parse_duration(value if isinstance(value, (int, float)) else str(value))
        if name in _SIZES:
            return parse_size(value if isinstance(value, int) else str(value))
        if name in _PATHS:
            return Path(str(value)).expanduser() if str(value) else None
        if name in _BOOLS:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise InvalidInput(f"{name}: not a yes/no value: {value!r}")
        if name in _FLOATS:
            return float(value)
        if name in _INTS:
            return int(value)
    except ValueError:
        raise InvalidInput(f"{name}: bad value {value!r}") from None
    return None if value is None else str(value)


def load_settings(config_file: Path | None = None, overrides: dict[str, Any] | None = None,
                  environ: dict[str, str] | None = None) -> WorkerSettings:
    """Merge the layers; an unknown key in the file is an error (a typo should not pass silently)."""
    names = {f.name for f in dataclasses.fields(WorkerSettings)}
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            data = tomllib.loads(Path(config_file).read_text())
        except OSError as exc:
            raise InvalidInput(f"cannot read the config file {config_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(f"the config file {config_file} is not valid TOML: {exc}") from None
        section = data.get("worker", data)
        if not isinstance(section, dict):
            raise InvalidInput(f"[worker] in {config_file} must be a table")
        for key, value in section.items():
            name = key.replace("-", "_")
            if name not in names:
                raise InvalidInput(f"unknown setting {key!r} in {config_file}")
            values[name] = _convert(name, value)
    env = os.environ if environ is None else environ
    for name in names:
        text = env.get("HIVEMIND_" + name.upper())
        if text is not None:
            values[name] = _convert(name, text)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _convert(name, value)
    settings = WorkerSettings(**values)
    settings.validate()
    return settings
