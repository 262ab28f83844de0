"""The worker's files are its owner's alone: the state folder is 0700, task folders and results are
private, an existing state folder left readable is tightened at start (and the log says so), and
another local account (`nobody`) cannot read a task's result. The Docker container's user still
reads its task folder and writes its output folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.modes import as_nobody, loose, mode, open_folder
from harness.pool import PoolProcess
from harness.worker import WorkerProcess
from harness.worker_fixtures import remove_task_containers

from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_worker.attempt import container_name

from .helpers import bundle, notebook, result_files, submit, user, wait_for, wait_state

CELLS = (
    "import os\nos.makedirs('outputs', exist_ok=True)\n"
    "open('outputs/secret.txt', 'w').write('alice private result')",
)


@pytest.fixture
def open_parent() -> Iterator[Path]:
    with open_folder() as parent:
        yield parent


def _run_kept(pool: PoolProcess, worker: WorkerProcess, tmp_path: Path) -> Path:
    """Run a task to success; returns the result ZIP the worker kept in its attempt folder."""
    alice = user(pool)
    try:
        task = submit(alice, bundle(notebook(*CELLS)))
        final = wait_state(alice, task.id, timeout=180)
        assert final.state == pb.SUCCEEDED, (final.error, worker.log()[-3000:])
        assert result_files(alice, task.id, tmp_path)["outputs/secret.txt"] == b"alice private result"
    finally:
        alice.close()
    kept = worker.state_dir / "attempts" / container_name(task.id, 1) / "result.zip"
    wait_for(kept.exists, 30, "the kept result")
    return kept


def _worker(pool: PoolProcess, state_dir: Path, executor: str) -> WorkerProcess:
    return WorkerProcess(
        pool,
        executor=executor,
        state_dir=state_dir,
        name=f"private-{executor}",
        env={"HIVEMIND_WORKER_KEEP_ATTEMPTS": "1"},
    )


@pytest.mark.parametrize(
    "executor", ["local", pytest.param("docker", marks=[pytest.mark.docker, pytest.mark.slow])]
)
def test_task_folders_and_results_are_private(
    pool: PoolProcess, open_parent: Path, tmp_path: Path, executor: str, request: pytest.FixtureRequest
) -> None:
    if executor == "docker":
        request.getfixturevalue("docker_engine")
    state_dir = open_parent / "state"
    worker = _worker(pool, state_dir, executor).start()
    try:
        kept = _run_kept(pool, worker, tmp_path)
        assert mode(state_dir) == 0o700
        assert mode(state_dir / "identity.json") == 0o600
        assert mode(kept) == 0o600 and mode(kept.parent) == 0o700
        if executor == "local":  # a container writes its output folder with its own umask
            assert loose(state_dir) == []
        peek = as_nobody("cat", str(kept))
        assert peek.returncode != 0 and "Permission denied" in peek.stderr
        listing = as_nobody("ls", str(state_dir))
        assert listing.returncode != 0 and "Permission denied" in listing.stderr
    finally:
        worker.close()
        remove_task_containers(worker.worker_id)


def test_an_existing_readable_state_folder_is_tightened_at_start(
    pool: PoolProcess, open_parent: Path
) -> None:
    state_dir = open_parent / "state"
    with _worker(pool, state_dir, "local"):
        pass
    for path in [state_dir, *state_dir.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert as_nobody("cat", str(state_dir / "identity.json")).returncode == 0, "setup: it should be readable"
    worker = _worker(pool, state_dir, "local")
    before = len(worker.log_path.read_text())
    with worker:
        assert loose(state_dir) == []
    log = worker.log_path.read_text()[before:]
    assert "the worker's state folder" in log and "was readable by other local accounts" in log
    assert as_nobody("cat", str(state_dir / "identity.json")).returncode != 0
