"""The pool's settings: defaults < TOML file (--config) < HIVEMIND_* environment < command-line flags."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .channel import DEFAULT_PORT
from .errors import InvalidInput
from .units import parse_duration, parse_size

DEFAULT_DATA_DIR = Path(".hivemind") / "pool"


def default_data_dir() -> Path:
    override = os.environ.get("HIVEMIND_DATA_DIR")
    return Path(override) if override else DEFAULT_DATA_DIR


@dataclass
class PoolSettings:
    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    data_dir: Path = field(default_factory=default_data_dir)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure: bool = False
    metrics_listen: str | None = None
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 15.0
    schedule_interval: float = 1.0  # the periodic scheduling tick; events trigger cycles too
    max_bundle_size: int = 2 * 1024**3
    max_result_size: int = 2 * 1024**3
    token_ttl: float = 30 * 86400.0
    join_token_ttl: float = 7 * 86400.0
    default_timeout: float = 6 * 3600.0
    max_timeout: float = 7 * 86400.0
    default_max_retries: int = 2
    retention: float = 30 * 86400.0  # keep finished tasks' bundles and results this long
    gc_interval: float = 600.0
    allow_network: bool = False  # the policy: may tasks that ask for network get it
    shutdown_grace: float = 5.0

    def validate(self) -> None:
        if self.heartbeat_interval <= 0 or self.heartbeat_timeout <= self.heartbeat_interval:
            raise InvalidInput("the heartbeat timeout must be longer than the heartbeat interval (> 0)")
        if self.max_bundle_size <= 0 or self.max_result_size <= 0:
            raise InvalidInput("size limits must be positive")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidInput("give both --tls-cert and --tls-key, or neither")
        if self.default_max_retries < 0 or self.default_max_retries > 100:
            raise InvalidInput("default max retries must be between 0 and 100")


_DURATIONS = {
    "heartbeat_interval",
    "heartbeat_timeout",
    "schedule_interval",
    "token_ttl",
    "join_token_ttl",
    "default_timeout",
    "max_timeout",
    "retention",
    "gc_interval",
    "shutdown_grace",
}
_SIZES = {"max_bundle_size", "max_result_size"}
_PATHS = {"data_dir", "tls_cert", "tls_key"}
_BOOLS = {"insecure", "allow_network"}
_INTS = {"default_max_retries"}


def _convert(name: str, value: Any) -> Any:
    if value is None:
        return None
    try:
        if name in _DURATIONS:
            return parse_duration(value if isinstance(value, (int, float)) else str(value))
        if name in _SIZES:
            return parse_size(value if isinstance(value, int) else str(value))
        if name in _PATHS:
            return Path(str(value)).expanduser()
        if name in _BOOLS:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise InvalidInput(f"{name}: not a yes/no value: {value!r}")
        if name in _INTS:
            return int(value)
    except ValueError:
        raise InvalidInput(f"{name}: bad value {value!r}") from None
    return str(value)


def load_settings(
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> PoolSettings:
    """Merge the layers; unknown keys in the file are an error (a typo should not pass silently)."""
    names = {f.name for f in dataclasses.fields(PoolSettings)}
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            data = tomllib.loads(Path(config_file).read_text())
        except OSError as exc:
            raise InvalidInput(f"cannot read the config file {config_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(f"the config file {config_file} is not valid TOML: {exc}") from None
        section = data.get("pool", data)
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
    settings = PoolSettings(**values)
    settings.validate()
    return settings
