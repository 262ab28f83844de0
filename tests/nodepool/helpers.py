"""Small builders shared by the pool's tests."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable

from hivemind_nodepool.client import PoolClient
from hivemind_nodepool.proto import nodepool_pb2 as pb

ALICE_PASSWORD = "alice-password-1"  # the user of tests/nodepool/conftest.py's `alice`
NOTEBOOK = '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}'
GiB = 1024**3


def bundle_bytes(entry: str = "main.ipynb", extra: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(entry, NOTEBOOK)
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def manifest(
    cpus: float = 1, memory: int = GiB, gpus: int = 0, disk: int = 0, **fields: object
) -> pb.Manifest:
    fields.setdefault("entry_notebook", "main.ipynb")
    fields.setdefault("max_retries", -1)
    resources = pb.Resources(cpus=cpus, memory_bytes=memory, gpus=gpus, disk_bytes=disk)
    return pb.Manifest(resources=resources, **fields)  # type: ignore[arg-type]


def submit(client: PoolClient, **kwargs: object) -> pb.Task:
    return client.submit(manifest(**kwargs), io.BytesIO(bundle_bytes()))  # type: ignore[arg-type]


def wait_for(
    predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.1, what: str = "condition"
) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def state_of(client: PoolClient, task_id: str) -> int:
    return client.get_task(task_id).state
