"""A cancelled or timed-out task returns what it produced so far: the notebook with the cells that
ran (the running one's outputs included) and its outputs/ files, so a user sees how far it got."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
from harness.worker import WorkerProcess
from harness.worker_fixtures import remove_task_containers

from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_worker.attempt import container_name

from .helpers import bundle, notebook, result_files, submit, task_containers, user, wait_for, wait_state

# Three cells: one that finishes (and writes an output file), one that prints and then runs for
# ever, one that is never reached.
CELLS = (
    "import os\nos.makedirs('outputs', exist_ok=True)\n"
    "open('outputs/progress.txt', 'w').write('first cell done')\nprint('first cell done')",
    "import time\nprint('second cell started', flush=True)\ntime.sleep(300)",
    "print('never printed')",
)


def _printed(alice: Any, task_id: str, text: str) -> bool:
    return any(text in e.text for e in alice.watch(task_id, follow=False) if e.kind == pb.TaskEvent.STDOUT)


def _text(output: dict[str, Any]) -> str:
    text = output.get("text", "")
    return "".join(text) if isinstance(text, list) else str(text)


def _check_partial(files: dict[str, bytes]) -> None:
    """The notebook stops where the task was stopped, and the output file written before is there."""
    assert "main.ipynb" in files, sorted(files)
    document = json.loads(files["main.ipynb"])
    texts = ["".join(_text(out) for out in cell.get("outputs", [])) for cell in document["cells"]]
    assert "first cell done" in texts[0]
    assert "second cell started" in texts[1], "the running cell's output so far is missing"
    assert texts[2] == "" and "never printed" not in "".join(texts)
    progress = document["metadata"]["hivemind"]
    assert progress["finished"] is False and progress["cells_total"] == 3
    assert progress["cells_done"] == 1
    assert files["outputs/progress.txt"] == b"first cell done"


def _kept_result(worker: WorkerProcess, task_id: str, attempt: int = 1) -> dict[str, bytes]:
    """The result ZIP the worker built, from its kept attempt folder."""
    path = worker.state_dir / "attempts" / container_name(task_id, attempt) / "result.zip"
    wait_for(path.exists, 30, f"the worker to build {path}")
    with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@pytest.mark.docker
@pytest.mark.slow
def test_timeout_returns_the_notebook_so_far(pool, docker_worker: WorkerProcess, tmp_path: Path) -> None:
    alice = user(pool)
    # room for a container and a kernel to start on a loaded machine before the first cell runs
    task = submit(alice, bundle(notebook(*CELLS)), timeout=20)
    final = wait_state(alice, task.id, timeout=90)
    assert final.state == pb.TIMED_OUT, (final.error, docker_worker.log()[-3000:])
    assert final.result_sha256, "a timed-out task returned no result"
    _check_partial(result_files(alice, task.id, tmp_path))
    assert task_containers(task.id) == []


@pytest.mark.parametrize(
    "executor", [pytest.param("docker", marks=[pytest.mark.docker, pytest.mark.slow]), "local"]
)
def test_cancel_builds_the_result_so_far(pool, executor: str, request: pytest.FixtureRequest) -> None:
    if executor == "docker":
        request.getfixturevalue("docker_engine")
    alice = user(pool)
    worker = WorkerProcess(
        pool, executor=executor, name=f"keeper-{executor}", env={"HIVEMIND_WORKER_KEEP_ATTEMPTS": "1"}
    ).start()
    try:
        task = submit(alice, bundle(notebook(*CELLS)))
        wait_for(lambda: _printed(alice, task.id, "second cell started"), 90, "the second cell to start")
        alice.cancel_task(task.id)
        assert wait_state(alice, task.id, timeout=30).state == pb.CANCELLED
        files = _kept_result(worker, task.id)
        _check_partial(files)
        meta = json.loads(files[".hivemind/result.json"])
        assert meta["outcome"] == "CANCELLED"
    finally:
        worker.stop()
        remove_task_containers(worker.worker_id)


def test_a_cancelled_task_result_can_be_fetched(pool, local_worker: WorkerProcess, tmp_path: Path) -> None:
    alice = user(pool)
    task = submit(alice, bundle(notebook(*CELLS)))
    wait_for(lambda: _printed(alice, task.id, "second cell started"), 90, "the second cell to start")
    alice.cancel_task(task.id)
    assert wait_state(alice, task.id, timeout=30).state == pb.CANCELLED
    final = wait_for(lambda: (t := alice.get_task(task.id)).result_sha256 and t, 15, "the result")
    assert final.state == pb.CANCELLED
    _check_partial(result_files(alice, task.id, tmp_path))
