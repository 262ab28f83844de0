"""The pool's settings, each declared once: defaults < TOML file (--config, [pool] table) <
HIVEMIND_POOL_* environment < flags of `hivemind-nodepool serve`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hivemind_nodepool.protocol.errors import InvalidInput
from hivemind_nodepool.protocol.layered_settings import (
    BOOL,
    DURATION,
    INT,
    PATH,
    SIZE,
    SettingsSchema,
    setting,
)
from hivemind_nodepool.protocol.wire import DEFAULT_PORT

DEFAULT_DATA_DIR = Path(".hivemind") / "pool"
DAY = 86400.0


@dataclass
class PoolSettings:
    listen: str = setting(
        f"127.0.0.1:{DEFAULT_PORT}", metavar="HOST:PORT", help="where to listen; port 0 picks a free one"
    )
    data_dir: Path = setting(
        DEFAULT_DATA_DIR, kind=PATH, help="the pool's data folder: `pool.db` and `blobs/`"
    )
    tls_cert: Path | None = setting(None, kind=PATH, help="server certificate (PEM), from `tls init`")
    tls_key: Path | None = setting(None, kind=PATH, help="server private key (PEM)")
    insecure: bool = setting(False, kind=BOOL, help="allow plaintext on a non-loopback address")
    metrics_listen: str | None = setting(None, metavar="HOST:PORT", help="serve Prometheus metrics here")
    heartbeat_interval: float = setting(5.0, kind=DURATION, help="how often workers heartbeat")
    heartbeat_timeout: float = setting(15.0, kind=DURATION, help="silence before a worker is lost")
    lease_margin: float | None = setting(
        None,
        kind=DURATION,
        help="a worker's lease lapses this long before the heartbeat timeout: a silent worker's "
        "tasks stop on their own that much before the pool may rerun them elsewhere",
        shown_default="a fifth of the heartbeat timeout",
    )
    timeout_grace: float = setting(
        60.0,
        kind=DURATION,
        help="past a task's timeout, how long its worker has to end it before the pool ends it TIMED_OUT",
    )
    schedule_interval: float = setting(
        1.0, kind=DURATION, help="the periodic scheduling tick; events trigger cycles too"
    )
    max_bundle_size: int = setting(2 * 1024**3, kind=SIZE, help="largest accepted bundle")
    max_result_size: int = setting(
        2 * 1024**3, kind=SIZE, help="largest accepted result; workers refuse a bigger one before uploading"
    )
    bundle_rate_limit: int = setting(
        0, kind=SIZE, help="bytes per second one bundle download may take; 0: no limit"
    )
    token_ttl: float = setting(30 * DAY, kind=DURATION, help="lifetime of a user's API token")
    join_token_ttl: float = setting(
        7 * DAY, kind=DURATION, help="lifetime of a join token created without one"
    )
    default_timeout: float = setting(6 * 3600.0, kind=DURATION, help="a task's timeout when it sets none")
    max_timeout: float = setting(7 * DAY, kind=DURATION, help="the longest timeout a task may set")
    default_max_retries: int = setting(
        2, kind=INT, help="retries after a lost worker when a task sets none (0 to 100)"
    )
    retention: float = setting(
        30 * DAY,
        kind=DURATION,
        help="keep finished tasks' bundles and results this long (unreferenced blobs are collected)",
    )
    gc_interval: float = setting(600.0, kind=DURATION, help="how often expired files are collected")
    allow_network: bool = setting(
        False,
        kind=BOOL,
        help="let tasks that ask for network have it (otherwise every task runs with `--network none`)",
    )
    shutdown_grace: float = setting(
        5.0, kind=DURATION, help="on SIGTERM, how long open calls may finish before the pool exits"
    )
    feed_queue_limit: int = setting(
        1000, kind=INT, help="task changes a slow WatchTasks reader may lag by before it is resynced"
    )
    disk_min_free: int = setting(
        64 * 1024**2,
        kind=SIZE,
        help="below this much free space on the data folder's disk, new tasks, results and live "
        "events are refused (the pool's disk is full) until space is freed",
    )
    disk_reserve: int = setting(
        8 * 1024**2,
        kind=SIZE,
        help="space the pool holds in `disk-reserve` and gives up when the disk fills, so cancels "
        "and state changes still work; 0: none",
    )
    offline_worker_hidden_after: float = setting(
        3600.0,
        kind=DURATION,
        help="users stop seeing a worker this long after it went offline (admins always see it; "
        "`hivemind-nodepool worker remove` forgets it)",
    )
    feed_auth_recheck: float = setting(
        2.0,
        kind=DURATION,
        help="how often open streams re-check their caller's access (expiry, and revocations made "
        "with --data-dir); revocations through the pool end them at once",
    )

    @property
    def lease(self) -> float:
        """How long a worker's lease lasts past the heartbeat (or Hello) the pool last answered."""
        # The margin covers the runner noticing (a fraction of a second) and the sandbox stopping.
        margin = self.heartbeat_timeout / 5 if self.lease_margin is None else self.lease_margin
        return self.heartbeat_timeout - margin

    def validate(self) -> None:
        if self.heartbeat_interval <= 0 or self.heartbeat_timeout <= self.heartbeat_interval:
            raise InvalidInput("the heartbeat timeout must be longer than the heartbeat interval (> 0)")
        if self.lease_margin is not None and self.lease_margin <= 0:
            raise InvalidInput("the lease margin must be positive")
        # A lease shorter than two heartbeats would lapse between two answers of a healthy pool.
        if self.lease < 2 * self.heartbeat_interval:
            raise InvalidInput(
                f"the lease (heartbeat timeout minus lease margin, {self.lease:g} s) must be at least "
                f"two heartbeat intervals ({2 * self.heartbeat_interval:g} s): lengthen the heartbeat "
                "timeout or shorten the margin"
            )
        if self.timeout_grace < 0 or self.bundle_rate_limit < 0:
            raise InvalidInput("the timeout grace and the bundle rate limit cannot be negative")
        if self.max_bundle_size <= 0 or self.max_result_size <= 0:
            raise InvalidInput("size limits must be positive")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidInput("give both --tls-cert and --tls-key, or neither")
        if self.default_max_retries < 0 or self.default_max_retries > 100:
            raise InvalidInput("default max retries must be between 0 and 100")
        if self.disk_min_free < 0 or self.disk_reserve < 0:
            raise InvalidInput("disk_min_free and disk_reserve cannot be negative")
        if self.offline_worker_hidden_after < 0:
            raise InvalidInput("offline_worker_hidden_after cannot be negative")
        if self.feed_queue_limit < 1 or self.feed_auth_recheck <= 0:
            raise InvalidInput("feed_queue_limit must be 1 or more and feed_auth_recheck positive")


SCHEMA = SettingsSchema(PoolSettings, table="pool", env_prefix="HIVEMIND_POOL_")


def default_data_dir() -> Path:
    """The data folder of admin commands run without --data-dir: the environment's, or the default."""
    found = SCHEMA.from_environment("data_dir")
    return found if isinstance(found, Path) else DEFAULT_DATA_DIR


def load_settings(
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> PoolSettings:
    """The pool's settings with every layer applied (the file's [pool] table)."""
    return SCHEMA.load(config_file, overrides, environ)
