"""`hivemind-worker env list` and `env prune`: the environments of a worker's state dir, and the
settings every environment cache is made from (the daemon uses the same)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from hivemind_nodepool.protocol.units import format_size

from .environments import EnvironmentCache, listing
from .settings import WorkerSettings
from .uv import IndexSettings

DOCKER_FOLDER = "environments"  # under the state dir
LOCAL_FOLDER = "venvs"


def index_settings(settings: WorkerSettings) -> IndexSettings:
    return IndexSettings(
        cache_dir=Path(settings.uv_cache).expanduser(),
        index_url=settings.index_url,
        extra_index_urls=tuple(settings.extra_index_url),
        find_links=Path(settings.find_links).expanduser() if settings.find_links else None,
        offline=settings.offline,
    )


def open_cache(
    settings: WorkerSettings, client: Any = None, runtimes: dict[str, str] | None = None
) -> EnvironmentCache:
    """The environment cache of the worker with these settings. Without a Docker client (env list)
    a Docker worker's cache can be read but not pruned."""
    state_dir = Path(settings.state_dir).expanduser()
    index = index_settings(settings)
    name = settings.name
    if settings.executor == "local":
        from .env_local import LocalEnvironments

        return LocalEnvironments(state_dir / LOCAL_FOLDER, settings.env_cache_size, index, name)
    from .env_docker import DockerEnvironments

    return DockerEnvironments(
        client,
        runtimes or {},
        state_dir / DOCKER_FOLDER,
        settings.env_cache_size,
        index,
        worker_name=name,
        allowed_images=tuple(settings.allow_image),
        network=settings.build_network,
        ca_bundle=settings.build_ca_bundle,
    )


def _ago(when: float) -> str:
    seconds = max(time.time() - when, 0)
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds // length:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def list_environments(settings: WorkerSettings, as_json: bool, out: TextIO = sys.stdout) -> int:
    rows = listing(open_cache(settings))
    if as_json:
        json.dump(rows, out, indent=1)
        out.write("\n")
        return 0
    if not rows:
        print("no environments", file=out)
        return 0
    for row in rows:
        state = "FAILED" if row["failed"] else format_size(int(row.get("size", 0)))
        print(
            f"{row['key'][:12]}  {state:>9}  {_ago(float(row.get('last_used', 0))):>9}  "
            f"{row.get('summary') or '(no summary)'}",
            file=out,
        )
        if row["failed"]:
            print(f"              {str(row.get('message', '')).splitlines()[0][:150]}", file=out)
    return 0


def prune_environments(
    settings: WorkerSettings, keys: list[str], older_than: float | None, out: TextIO = sys.stdout
) -> int:
    client = None
    if settings.executor == "docker":
        from .image import docker_client

        client = docker_client()
    removed = open_cache(settings, client).prune(keys or None, older_than)
    print(f"removed {len(removed)} environment(s) and remembered failure(s)", file=out)
    for key in removed:
        print(f"  {key[:12]}", file=out)
    return 0
