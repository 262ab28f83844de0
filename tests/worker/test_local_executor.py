"""The local executor: the same flow in a venv per requirements hash, with timeout and cancel.
It does not isolate the task; these tests only check what it promises."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from harness.wheels import demo_wheelhouse
from harness.worker import WorkerProcess

from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.environment import check_requirements
from hivemind_worker.env_local import LocalEnvironments
from hivemind_worker.environment_request import LOCK, EnvironmentRequest
from hivemind_worker.environments import QuietReport
from hivemind_worker.uv import IndexSettings

from .helpers import bundle, notebook, result_files, stdout_of, submit, user, wait_for, wait_state


def test_local_task_with_parameters_and_variables(pool, local_worker: WorkerProcess, tmp_path: Path) -> None:
    alice = user(pool)
    cells = (
        "import os\nprint('token' , os.environ.get('HIVEMIND_JOIN_TOKEN'))\n"
        "print('keys', sorted(k for k in os.environ if k.startswith('HIVEMIND_')))",
        "result = {'n': n * 2}\nos.makedirs('outputs', exist_ok=True)\n"
        "open('outputs/r.txt', 'w').write(str(result))",
    )
    task = submit(
        alice, bundle(notebook(*cells, parameters="n = 1")), parameters={"n": 21}, pull_variables=["result"]
    )
    final = wait_state(alice, task.id, timeout=120)
    assert final.state == pb.SUCCEEDED, (final.error, final.traceback, local_worker.log()[-2000:])
    text = stdout_of(list(alice.watch(task.id, follow=False)))
    assert "token None" in text, "the worker's own secrets leaked into the task's environment"
    assert "keys ['HIVEMIND_TASK']" in text
    files = result_files(alice, task.id, tmp_path)
    assert json.loads(files[".hivemind/variables.json"])["result"]["json"] == {"n": 42}
    assert files["outputs/r.txt"] == b"{'n': 42}"
    assert "does not isolate" in local_worker.log()


def test_local_cancel_and_timeout_kill_the_whole_tree(pool, local_worker: WorkerProcess) -> None:
    alice = user(pool)
    sleeper = (
        "import subprocess, time\nchild = subprocess.Popen(['sleep', '300'])\n"
        "open('child.pid', 'w').write(str(child.pid))\nprint('started', child.pid, flush=True)\n"
        "time.sleep(300)"
    )
    task = submit(alice, bundle(notebook(sleeper)))
    started = wait_for(
        lambda: [
            e.text
            for e in alice.watch(task.id, follow=False)
            if e.kind == pb.TaskEvent.STDOUT and "started" in e.text
        ],
        60,
        "start",
    )
    child = int(started[0].split()[1])
    alice.cancel_task(task.id)
    assert wait_state(alice, task.id, timeout=30).state == pb.CANCELLED

    import psutil

    wait_for(
        lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE,
        10,
        "the task's child process to be killed",
    )

    timed = submit(alice, bundle(notebook("import time\ntime.sleep(300)")), timeout=2)
    final = wait_state(alice, timed.id, timeout=60)
    assert final.state == pb.TIMED_OUT


def test_local_memory_limit(pool, local_worker: WorkerProcess) -> None:
    alice = user(pool)
    hog = "blocks = []\nwhile True:\n    blocks.append(bytearray(32 * 2**20))"
    task = submit(alice, bundle(notebook(hog)), memory=300 * 1024**2)
    final = wait_state(alice, task.id, timeout=60)
    assert final.state == pb.FAILED and "out of memory" in final.error


def test_venv_per_requirements_is_built_once_and_evicted_lru(tmp_path: Path) -> None:
    """Two users of the same lock at once build one venv; past the size limit the least recently
    used venv that nobody holds is removed."""
    index = IndexSettings(
        tmp_path / "uv-cache", find_links=demo_wheelhouse(tmp_path / "wheels"), offline=True
    )
    envs = LocalEnvironments(tmp_path / "venvs", 1, index)
    first = _lock(b"hmdemo-alpha==1.0\n")
    second = _lock(b"hmdemo-alpha==1.1\n")
    refs: list[str] = []
    barrier = threading.Barrier(2)

    def use() -> None:
        barrier.wait()
        with envs.use(first, QuietReport()) as ref:
            refs.append(ref)

    threads = [threading.Thread(target=use) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert envs.builds == 1 and refs[0] == refs[1]
    assert Path(refs[0]).exists()
    with envs.use(second, QuietReport()) as other:
        assert other != refs[0]
        assert Path(other).exists()
        shown = subprocess.run(
            [other, "-c", "import hmdemo_alpha, papermill; print(hmdemo_alpha.__version__)"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert shown.strip() == "1.1"  # the lock's package, beside the worker's own (papermill)
    assert envs.builds == 2
    assert not Path(refs[0]).exists(), "the least recently used venv was not evicted"
    base = envs.bases()[f"{sys.version_info[0]}.{sys.version_info[1]}"]
    assert list(envs.entries()) == [envs.key_for(second, base)]


def _lock(text: bytes) -> EnvironmentRequest:
    return EnvironmentRequest(LOCK, text=text, requirements=tuple(check_requirements(text)))


def test_broken_requirements_fail_with_pips_reason(pool, local_worker: WorkerProcess) -> None:
    alice = user(pool)
    data = bundle(notebook("1"), {"requirements.txt": b"--definitely-not-an-option\n"})
    final = wait_state(alice, submit(alice, data).id, timeout=120)
    assert final.state == pb.FAILED
    assert "environment could not be built" in final.error
    assert "--definitely-not-an-option is not allowed" in final.error, final.error


@pytest.mark.parametrize("entry", ["missing.ipynb", "../outside.ipynb"])
def test_bad_entry_notebook_fails_clearly(pool, local_worker: WorkerProcess, entry: str) -> None:
    alice = user(pool)
    try:
        task = submit(alice, bundle(notebook("1")), entry_notebook=entry)
    except Exception as exc:  # the pool may refuse it up front, which is just as good
        assert "notebook" in str(exc).lower() or "path" in str(exc).lower()
        return
    final = wait_state(alice, task.id, timeout=60)
    assert final.state == pb.FAILED and "entry notebook" in final.error
