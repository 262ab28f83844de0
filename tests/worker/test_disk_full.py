"""A task that ends while the pool's disk is full: the real worker holds its events and its result and
retries with backoff (DiskFull is "later", not a refusal), and the task succeeds with its whole
result once the pool has room again. The pool's data folder is a real small filesystem (a tmpfs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.disk import fill, make_room, small_filesystem
from harness.pool import PoolProcess
from harness.worker import WorkerProcess

from hivemind_nodepool.proto import nodepool_pb2 as pb

from .helpers import bundle, notebook, result_files, stdout_of, submit, user, wait_for, wait_state

MiB = 1024**2


@pytest.fixture
def small_pool(tmp_path: Path) -> Iterator[PoolProcess]:
    with (
        small_filesystem(tmp_path / "disk", "24m") as disk,
        PoolProcess(disk, extra_args=["--disk-min-free", "4M", "--disk-reserve", "2M"]) as pool,
    ):
        yield pool


def test_the_worker_holds_its_result_while_the_pools_disk_is_full(
    small_pool: PoolProcess, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    cells = (
        "import os, time\nos.makedirs('outputs', exist_ok=True)\n"
        "open('outputs/answer.txt', 'w').write('42')\nprint('waiting', flush=True)",
        f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.1)\nprint('finished', flush=True)",
    )
    alice = user(small_pool)
    with WorkerProcess(small_pool, executor="local", name="holder") as worker:
        task = submit(alice, bundle(notebook(*cells)))
        wait_for(
            lambda: "waiting" in stdout_of(list(alice.watch(task.id, follow=False))), 90, "the task to start"
        )
        fill(small_pool.data_dir, leave=MiB)
        wait_for(lambda: alice.pool_status().disk_full, 30, "the pool to see its disk full")
        go.touch()  # the task ends now, with its result to upload
        wait_for(lambda: worker.log().count("wait for room on the pool") >= 2, 60, "the worker to retry")
        assert alice.get_task(task.id).state in (pb.RUNNING, pb.UPLOADING)

        make_room(small_pool.data_dir)

        final = wait_state(alice, task.id, timeout=120)
        assert final.state == pb.SUCCEEDED, (final.error, worker.log()[-3000:])
        assert result_files(alice, task.id, tmp_path)["outputs/answer.txt"] == b"42"
        printed = stdout_of(list(alice.watch(task.id, follow=False)))
        assert "waiting" in printed and "finished" in printed, "events were dropped"
    assert "giving up" not in worker.log()


def test_a_result_bigger_than_the_room_left_is_held_until_there_is_room(
    small_pool: PoolProcess, tmp_path: Path
) -> None:
    """The disk is not full when the upload starts, but fills during it (ENOSPC in the middle): the
    worker keeps the result and sends it again later, whole."""
    go = tmp_path / "go"
    cells = (
        "import os, time\nprint('waiting', flush=True)",
        f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.1)\n"
        "os.makedirs('outputs', exist_ok=True)\n"
        "open('outputs/big.bin', 'wb').write(os.urandom(10 * 1024 * 1024))",
    )
    alice = user(small_pool)
    with WorkerProcess(small_pool, executor="local", name="big-holder") as worker:
        task = submit(alice, bundle(notebook(*cells)))
        wait_for(
            lambda: "waiting" in stdout_of(list(alice.watch(task.id, follow=False))), 90, "the task to start"
        )
        fill(small_pool.data_dir, leave=7 * MiB)  # over the minimum, under the result's size
        assert not alice.pool_status().disk_full
        go.touch()
        wait_for(lambda: worker.log().count("holding it") >= 2, 90, "the worker to retry the upload")
        assert alice.get_task(task.id).state == pb.UPLOADING

        make_room(small_pool.data_dir)

        final = wait_state(alice, task.id, timeout=120)
        assert final.state == pb.SUCCEEDED, (final.error, worker.log()[-3000:])
        assert len(result_files(alice, task.id, tmp_path)["outputs/big.bin"]) == 10 * MiB
    assert "giving up" not in worker.log()
