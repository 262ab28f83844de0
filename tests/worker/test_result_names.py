"""A task's result through a real pool and worker: outputs that are ordinary on Linux come back
whole, and a result the pool refuses ends the task FAILED at once with the reason, sent once."""

from __future__ import annotations

import re
import urllib.request
import zipfile
from pathlib import Path

from harness import FakeWorker
from harness.pool import PoolProcess
from harness.worker import WorkerProcess

from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.bundle import LocalNames, extract_new_folder
from hivemind_worker.attempt import Attempt, AttemptConfig
from hivemind_worker.bundles import BundleCache
from hivemind_worker.executors.local import LocalExecutor

from .helpers import bundle, notebook, submit, user, wait_state

# The outputs the issue saw refused: two names that differ only in case, a backslash, 20 MB of
# zeros (which compress about a thousand to one).
WRITE_OUTPUTS = (
    "import os\n"
    "os.makedirs('outputs', exist_ok=True)\n"
    "open('outputs/Report.txt', 'w').write('upper')\n"
    "open('outputs/report.txt', 'w').write('lower')\n"
    "open('outputs/a\\\\b.txt', 'w').write('backslash')\n"
    "open('outputs/zeros.bin', 'wb').write(bytes(20_000_000))\n"
)
EXPECTED = {
    "outputs/Report.txt": b"upper",
    "outputs/report.txt": b"lower",
    "outputs/a\\b.txt": b"backslash",
    "outputs/zeros.bin": bytes(20_000_000),
}


def test_ordinary_linux_outputs_come_back(
    pool: PoolProcess, local_worker: WorkerProcess, tmp_path: Path
) -> None:
    alice = user(pool)
    task = submit(alice, bundle(notebook(WRITE_OUTPUTS)))
    final = wait_state(alice, task.id, timeout=180)
    assert final.state == pb.SUCCEEDED, (final.error, local_worker.log()[-3000:])
    archive = alice.fetch_result(task.id, tmp_path / "result.zip")
    # Unpacked as `hivemind fetch` does, here on Linux: every file under its own name.
    here = extract_new_folder(
        archive, tmp_path / "linux", names=LocalNames(windows=False, case_insensitive=False)
    )
    assert here.renamed == {}
    for name, data in EXPECTED.items():
        assert (tmp_path / "linux" / name).read_bytes() == data, name
    # On a case-insensitive Windows machine the clashing names get names of their own, said so.
    there = extract_new_folder(
        archive, tmp_path / "windows", names=LocalNames(windows=True, case_insensitive=True)
    )
    assert there.renamed == {
        "outputs/report.txt": "outputs/report~2.txt",
        "outputs/a\\b.txt": "outputs/a_b.txt",
    }
    assert (tmp_path / "windows" / "outputs" / "report~2.txt").read_bytes() == b"lower"
    assert (tmp_path / "windows" / "outputs" / "Report.txt").read_bytes() == b"upper"


def test_a_result_the_pool_refuses_fails_the_task_at_once(tmp_path: Path) -> None:
    """Over the pool's result limit: FAILED with the reason at once, not retried every few seconds
    until the pool's backstop (timeout + 60 s) ends it TIMED_OUT. The worker knows the pool's limit
    from its Welcome and refuses such a result itself; one the pool refuses on arrival ends the
    same way (below, and tests/nodepool/test_result_refusal.py)."""
    noise = "import os\nos.makedirs('outputs', exist_ok=True)\n"
    noise += "open('outputs/noise.bin', 'wb').write(os.urandom(3 * 1024 * 1024))\n"
    with (
        PoolProcess(tmp_path / "pool", extra_args=["--max-result-size", "1M"]) as pool,
        WorkerProcess(pool, executor="local", name="refused") as worker,
    ):
        alice = user(pool)
        task = submit(alice, bundle(notebook(noise)), timeout=600)
        final = wait_state(alice, task.id, timeout=300)  # the backstop would be at 660 s
        log = worker.log()
    assert final.state == pb.FAILED, (pb.TaskState.Name(final.state), final.error, log[-3000:])
    assert "over the pool's limit of 1 MiB" in final.error, final.error
    assert final.result_sha256 == ""
    assert not re.search(r"uploading \S+ failed .*; retrying", log), "a refused result was sent again"


def _uploads(pool: PoolProcess) -> int:
    with urllib.request.urlopen(f"http://{pool.metrics}/metrics", timeout=10) as response:
        text = response.read().decode()
    pattern = r'^hivemind_rpcs_total{method="/hivemind.nodepool.v1.WorkerGateway/UploadResult"} ([0-9.e+]+)$'
    found = re.search(pattern, text, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def test_the_worker_never_sends_a_refused_result_again(tmp_path: Path) -> None:
    """The worker's upload, given a result the pool refuses on arrival (here one that climbs out of
    its folder, as a tampered result would): one upload, no retry, and the task has ended FAILED
    with the pool's reason. A passing failure would have been retried for up to 10 minutes."""
    with PoolProcess(tmp_path / "pool", extra_args=["--metrics-listen", "127.0.0.1:0"]) as pool:
        alice = user(pool)
        task = submit(alice, bundle(notebook("1")))
        fake = FakeWorker(pool.address, pool.join_token(), name="uploader").connect()
        try:
            assignment = fake.next_assignment()
            for state in (pb.PREPARING, pb.RUNNING, pb.UPLOADING):
                fake.status(assignment, state)
            attempt = Attempt(
                assignment,
                fake.client,
                LocalExecutor(tmp_path / "state"),
                bundles=BundleCache(tmp_path / "bundles", 1024**3),
                attempts_root=tmp_path / "attempts",
                config=AttemptConfig(),
            )
            hostile = tmp_path / "hostile.zip"
            with zipfile.ZipFile(hostile, "w") as archive:
                archive.writestr("main.ipynb", "{}")
                archive.writestr("../escaped.txt", "x")
            before = _uploads(pool)
            attempt._upload(
                pb.ResultHeader(task_id=task.id, attempt=assignment.attempt, outcome=pb.SUCCEEDED), hostile
            )
            attempt.events.close(timeout=5)
            assert _uploads(pool) - before == 1
        finally:
            fake.close()
        final = alice.get_task(task.id)
    assert final.state == pb.FAILED
    assert final.error.startswith("the result was refused: entry '../escaped.txt' climbs out")
