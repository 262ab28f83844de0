"""The pool's settings: defaults < TOML file (--config) < HIVEMIND_* environment < command-line flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hivemind_nodepool.protocol.errors import InvalidInput
from hivemind_nodepool.protocol.layered_settings import FieldKinds, load_layers
from hivemind_nodepool.protocol.wire import DEFAULT_PORT

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
    feed_queue_limit: int = 1000  # tasks a WatchTasks reader may fall behind by before a resync
    feed_auth_recheck: float = 15.0  # an idle task feed re-checks its caller's token this often

    def validate(self) -> None:
        if self.heartbeat_interval <= 0 or self.heartbeat_timeout <= self.heartbeat_interval:
            raise InvalidInput("the heartbeat timeout must be longer than the heartbeat interval (> 0)")
        if self.max_bundle_size <= 0 or self.max_result_size <= 0:
            raise InvalidInput("size limits must be positive")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidInput("give both --tls-cert and --tls-key, or neither")
        if self.default_max_retries < 0 or self.default_max_retries > 100:
            raise InvalidInput("default max retries must be between 0 and 100")
        if self.feed_queue_limit < 1 or self.feed_auth_recheck <= 0:
            raise InvalidInput("feed_queue_limit must be 1 or more and feed_auth_recheck positive")


KINDS = FieldKinds(
    durations=frozenset(
        {
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
            "feed_auth_recheck",
        }
    ),
    sizes=frozenset({"max_bundle_size", "max_result_size"}),
    paths=frozenset({"data_dir", "tls_cert", "tls_key"}),
    bools=frozenset({"insecure", "allow_network"}),
    ints=frozenset({"default_max_retries", "feed_queue_limit"}),
)


def load_settings(
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> PoolSettings:
    """The pool's settings with every layer applied (the file's [pool] table)."""
    return load_layers(
        PoolSettings, "pool", KINDS, config_file=config_file, overrides=overrides, environ=environ
    )
