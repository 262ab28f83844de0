"""A task's disk limit (--task-disk, a task's --disk) and the pre-upload result limit, with a real
pool, a real worker and real tasks that write past the limit in their task folder, their output
folders and /tmp. While they write, the test measures what each attempt holds on the host."""

from __future__ import annotations

import os
import re
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from harness.pool import PoolProcess
from harness.worker import WorkerProcess

from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.errors import NotFound
from hivemind_worker.bundles import file_sha256
from hivemind_worker.disk import can_mount, mounts_under

from .helpers import GiB, MiB, bundle, notebook, result_files, submit, user, wait_for, wait_state

LIMIT = 64 * MiB
# A loop-mounted disk image is sized limit + limit/32 + 8 MiB (disk.py): the kernel's hard bound.
MOUNT_BOUND = LIMIT + LIMIT // 32 + 8 * MiB + MiB
# Measured every second: a writer throttled to about 40 MiB/s is stopped long before this.
MONITOR_BOUND = LIMIT + 400 * MiB

FILL = """
import os, tempfile, time
path = {path}
os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
block = os.urandom(2**20)  # incompressible, so the result that carries it is an ordinary one
with open(path, "wb", buffering=0) as sink:
    while True:  # past "no space left on device" too, as a hostile task would
        try:
            sink.write(block)
        except OSError:
            time.sleep(0.05)
        {throttle}
"""


def filler(path_expr: str, throttle: bool) -> bytes:
    code = FILL.format(path=path_expr, throttle="time.sleep(0.025)" if throttle else "pass")
    return bundle(notebook(code))


def host_bytes(root: Path) -> int:
    """Blocks held on the host under root, like `du -x`: a task disk mounted inside is counted as
    its image file, not walked twice."""
    try:
        device = root.lstat().st_dev
    except OSError:
        return 0
    total, stack = 0, [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if info.st_dev != device:
                continue
            total += info.st_blocks * 512
            if stat.S_ISDIR(info.st_mode):
                stack.append(Path(entry.path))
    return total


def task_disk_bytes(attempt: Path) -> int:
    """What an attempt's disk holds on the host: its image file's blocks where it is mounted, else
    its folder's (the result ZIP beside it is the worker's, capped by the result limit)."""
    disk, image = attempt / "disk", attempt / "disk.img"
    try:
        held = image.stat().st_blocks * 512
    except OSError:
        held = 0
    if not os.path.ismount(disk):
        held += host_bytes(disk)
    return held


@contextmanager
def measuring(attempts: Path) -> Iterator[dict[str, int]]:
    """The peak host bytes of each attempt folder, sampled every 50 ms while the block runs."""
    peaks: dict[str, int] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            try:
                folders = list(attempts.iterdir())
            except OSError:
                continue
            for folder in folders:
                peaks[folder.name] = max(peaks.get(folder.name, 0), task_disk_bytes(folder))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        done.set()
        thread.join(timeout=10)


def check_bundle_cache(state_dir: Path) -> None:
    bundles = list((state_dir / "bundles").glob("*.zip"))
    assert bundles, "the bundle cache is empty"
    for path in bundles:
        assert file_sha256(path) == path.stem, f"the cached bundle {path.name} was damaged"


def run_fillers(
    pool: PoolProcess, worker: WorkerProcess, targets: dict[str, str], throttle: bool, bound: int
) -> None:
    """Each target (a Python expression for the path) gets a filler task; beside them a plain task
    runs at the same time and one more afterwards. Each filler ends FAILED with the message, no
    attempt ever held more than `bound` on the host, and the worker goes on working."""
    alice = user(pool)
    attempts = worker.state_dir / "attempts"
    good = bundle(
        notebook(
            "import os, time\ntime.sleep(2)\nos.makedirs('outputs', exist_ok=True)\n"
            "open('outputs/ok.txt', 'w').write('fine')"
        )
    )
    with measuring(attempts) as peaks:
        tasks = {
            where: submit(alice, filler(path, throttle), memory=256 * MiB, cpus=0.25)
            for where, path in targets.items()
        }
        beside = submit(alice, good, memory=256 * MiB, cpus=0.25)
        finals = {where: wait_state(alice, task.id, timeout=240) for where, task in tasks.items()}
        assert wait_state(alice, beside.id, timeout=240).state == pb.SUCCEEDED
    for where, final in finals.items():
        assert final.state == pb.FAILED, (
            where,
            pb.TaskState.Name(final.state),
            final.error,
            worker.log()[-3000:],
        )
        assert "disk limit of 64 MiB exceeded" in final.error, (where, final.error)
    for where, task in tasks.items():
        held = max((v for k, v in peaks.items() if task.id in k), default=0)
        print(f"{where}: at most {held / MiB:.1f} MiB on the host (bound {bound / MiB:.0f} MiB)")
        assert 0 < held <= bound, f"{where}: the attempt held {held / MiB:.0f} MiB on the host"
    after = submit(alice, good, memory=256 * MiB, cpus=0.25)
    final = wait_state(alice, after.id, timeout=120)
    assert final.state == pb.SUCCEEDED, (final.error, worker.log()[-3000:])
    check_bundle_cache(worker.state_dir)
    assert (worker.state_dir / "identity.json").exists()
    wait_for(lambda: not mounts_under(attempts), 30, "the task disks to be unmounted")
    assert not list(attempts.glob("*/disk.img")), "a task's disk image was left behind"


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("enforce", ["auto", "monitor"])
def test_docker_tasks_writing_past_the_disk_limit_fail(
    pool: PoolProcess, docker_engine: None, enforce: str
) -> None:
    from conftest import require

    from hivemind_worker.image import runtime_image_exists

    require(runtime_image_exists(), "the runtime image is missing: hivemind-worker image build --bootstrap")
    # auto: where the worker is root with loop devices, the kernel holds the limit
    mounted = enforce == "auto" and can_mount() == ""
    extra = ["--task-disk", "64M", "--task-disk-enforce", enforce]
    with WorkerProcess(pool, executor="docker", name="disk-docker", extra_args=extra) as worker:
        assert ("a size-limited filesystem" if mounted else "monitored") in worker.log()
        run_fillers(
            pool,
            worker,
            {
                "task folder": "'big.bin'",
                "outputs": "'outputs/big.bin'",
                "runner's output folder": "'/hivemind/out/big.bin'",
                "/tmp": "os.path.join(tempfile.gettempdir(), 'big.bin')",
            },
            throttle=not mounted,
            bound=MOUNT_BOUND if mounted else MONITOR_BOUND,
        )


@pytest.mark.slow
def test_local_tasks_writing_past_the_disk_limit_are_stopped_by_the_watch(pool: PoolProcess) -> None:
    extra = ["--task-disk", "64M", "--task-disk-enforce", "monitor"]
    with WorkerProcess(pool, executor="local", name="disk-local", extra_args=extra) as worker:
        assert "monitored" in worker.log()
        run_fillers(
            pool,
            worker,
            {
                "task folder": "'big.bin'",
                "outputs": "'outputs/big.bin'",
                "runner's output folder": "os.path.join('..', 'out', 'big.bin')",
                "/tmp": "os.path.join(tempfile.gettempdir(), 'big.bin')",
            },
            throttle=True,
            bound=MONITOR_BOUND,
        )


@pytest.mark.slow
def test_a_task_asks_for_its_disk_up_to_what_workers_offer(pool: PoolProcess) -> None:
    alice = user(pool)
    with WorkerProcess(pool, executor="local", name="disk-ask", extra_args=["--task-disk", "64M"]) as worker:
        listed = wait_for(
            lambda: [w for w in alice.list_workers() if w.id == worker.worker_id], 30, "the worker listed"
        )
        assert listed[0].capacity.disk_bytes == LIMIT, "the worker reports its per-task disk"

        too_big = submit(alice, bundle(notebook("print(1)")), disk=GiB)
        reason = wait_for(lambda: alice.get_task(too_big.id).pending_reason, 30, "a pending reason")
        assert alice.get_task(too_big.id).state == pb.QUEUED
        assert reason == "needs 1.0 GiB of disk, the largest worker offers 64.0 MiB per task", reason
        alice.cancel_task(too_big.id)

        small = submit(alice, filler("'big.bin'", throttle=True), disk=16 * MiB)
        final = wait_state(alice, small.id, timeout=120)
        assert final.state == pb.FAILED and "disk limit of 16 MiB exceeded" in final.error, final.error


@pytest.mark.slow
def test_a_result_over_the_pools_limit_is_refused_before_upload(tmp_path: Path) -> None:
    with PoolProcess(tmp_path / "pool", extra_args=["--max-result-size", "1M"]) as pool:
        alice = user(pool)
        with WorkerProcess(pool, executor="local", name="result-limit") as worker:
            code = (
                "import os\nos.makedirs('outputs')\nopen('outputs/r.bin', 'wb').write(os.urandom(3 * 2**20))"
            )
            task = submit(alice, bundle(notebook(code)))
            final = wait_state(alice, task.id, timeout=120)
            assert final.state == pb.FAILED, (final.error, worker.log()[-3000:])
            assert re.fullmatch(r"the result is 3(\.0)? MiB, over the pool's limit of 1 MiB", final.error), (
                final.error
            )
            with pytest.raises(NotFound):
                result_files(alice, task.id, tmp_path)
            assert "retrying" not in worker.log(), "the worker tried to upload what the pool refuses"
            small = submit(alice, bundle(notebook("print('fine')")))
            assert wait_state(alice, small.id, timeout=120).state == pb.SUCCEEDED


@pytest.mark.slow
def test_a_killed_workers_task_disk_is_unmounted_when_it_starts_again(
    pool: PoolProcess, tmp_path: Path
) -> None:
    if can_mount():
        pytest.skip(f"task disks are not mounted here ({can_mount()}); nothing can be left mounted")
    alice = user(pool)
    state = tmp_path / "state"
    worker = WorkerProcess(pool, executor="local", state_dir=state, name="disk-killed").start()
    try:
        task = submit(alice, bundle(notebook("import time\ntime.sleep(300)")), max_retries=0)
        wait_state(alice, task.id, {pb.RUNNING}, timeout=120)
        assert mounts_under(state / "attempts"), "the running task has no mounted disk"
        worker.kill()  # no chance to unmount
        assert mounts_under(state / "attempts")
        worker.start()
        assert not mounts_under(state / "attempts"), "the restarted worker left the old task disk mounted"
        assert "left from an earlier run" in worker.log()
        after = submit(alice, bundle(notebook("print('fine')")))
        assert wait_state(alice, after.id, timeout=120).state == pb.SUCCEEDED
    finally:
        worker.close()
