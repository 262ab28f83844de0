"""Builders for the worker's tests: notebooks, bundles, submissions, waiting."""

from __future__ import annotations

import io
import json
import subprocess
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.pool import PoolProcess

from hivemind_nodepool.client import PoolClient
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.states import TERMINAL_STATES

GiB = 1024**3
MiB = 1024**2
USER, PASSWORD = "alice", "alice-password-1"
# A package the runtime image does not carry, from the test wheelhouse (tests/harness/wheels.py):
# the workers that install it run with --find-links and --offline (harness/env_worker.py).
EXTRA_PACKAGE = "hmdemo-delta==1.0"


def notebook(*cells: str, parameters: str | None = None) -> bytes:
    """A notebook whose code cells are `cells`, with a tagged parameters cell first when given."""
    items: list[dict[str, Any]] = []
    if parameters is not None:
        items.append(
            {
                "cell_type": "code",
                "metadata": {"tags": ["parameters"]},
                "source": parameters,
                "outputs": [],
                "execution_count": None,
                "id": "params",
            }
        )
    for index, source in enumerate(cells):
        items.append(
            {
                "cell_type": "code",
                "metadata": {},
                "source": source,
                "outputs": [],
                "execution_count": None,
                "id": f"cell{index}",
            }
        )
    document = {
        "cells": items,
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    }
    return json.dumps(document).encode()


def bundle(nb: bytes, files: dict[str, bytes] | None = None, entry: str = "main.ipynb") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(entry, nb)
        for name, data in (files or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def user(pool: PoolProcess) -> PoolClient:
    try:
        pool.add_user(USER, PASSWORD)
    except RuntimeError as exc:
        if "exists" not in str(exc):
            raise
    return pool.login(USER, PASSWORD)


def manifest(
    memory: int = GiB, cpus: float = 1, timeout: int = 300, disk: int = 0, **fields: Any
) -> pb.Manifest:
    fields.setdefault("entry_notebook", "main.ipynb")
    fields.setdefault("max_retries", 2)
    if "parameters" in fields:
        fields["parameters_json"] = json.dumps(fields.pop("parameters"))
    return pb.Manifest(
        resources=pb.Resources(cpus=cpus, memory_bytes=memory, disk_bytes=disk),
        timeout_seconds=timeout,
        **fields,
    )


def submit(client: PoolClient, data: bytes, **fields: Any) -> pb.Task:
    return client.submit(manifest(**fields), io.BytesIO(data))


def wait_state(
    client: PoolClient,
    task_id: str,
    states: set[int] | frozenset[int] = TERMINAL_STATES,
    timeout: float = 120.0,
) -> pb.Task:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = client.get_task(task_id)
        if task.state in states:
            return task
        time.sleep(0.1)
    raise AssertionError(
        f"task {task_id} is {pb.TaskState.Name(client.get_task(task_id).state)} "
        f"after {timeout:.0f}s, not one of {[pb.TaskState.Name(s) for s in states]}"
    )


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def result_files(client: PoolClient, task_id: str, folder: Path) -> dict[str, bytes]:
    path = client.fetch_result(task_id, folder / f"{task_id}.zip")
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def outputs_of(executed: bytes) -> list[dict[str, Any]]:
    """Every output of every cell of an executed notebook."""
    document = json.loads(executed)
    return [out for cell in document["cells"] for out in cell.get("outputs", [])]


def stdout_of(events: list[pb.TaskEvent]) -> str:
    return "".join(e.text for e in events if e.kind == pb.TaskEvent.STDOUT)


def task_containers(task_id: str) -> list[str]:
    """Containers (running or not) of a task, by the label the worker puts on them."""
    return subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=org.hivemind.task={task_id}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()


def phase_names(events: list[pb.TaskEvent]) -> list[str]:
    """The phases an attempt went through, in order (a phase reporting its steps counts once)."""
    names: list[str] = []
    for event in events:
        if event.kind == pb.TaskEvent.PHASE and (not names or names[-1] != event.text):
            names.append(event.text)
    return names


def phase_details_of(events: list[pb.TaskEvent], name: str) -> list[dict[str, Any]]:
    """The details of each PHASE event of `name`."""
    return [
        json.loads(e.data_json) if e.data_json else {}
        for e in events
        if e.kind == pb.TaskEvent.PHASE and e.text == name
    ]
