"""A full disk under the pool: new data is refused with DiskFull ("the pool's disk is full"), reads,
watches and cancels go on, status and metrics say so, and the pool recovers by itself once space
returns. The pool's data folder is a real small filesystem (a tmpfs mounted for the test), filled
by a file the test writes, as another program on the machine would."""

from __future__ import annotations

import io
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import FakeWorker, PoolProcess
from harness.disk import fill, make_room, small_filesystem
from harness.fake_worker import make_result_zip

from hivemind_nodepool.client import PoolClient
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.errors import DiskFull, HiveMindError

from .helpers import bundle_bytes, manifest, submit, wait_for

PASSWORD = "alice-password-1"
MiB = 1024**2


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_filesystem(tmp_path / "disk", "24m") as mounted:
        yield mounted


def _pool(data_dir: Path, min_free: str, reserve: str) -> PoolProcess:
    args = ["--disk-min-free", min_free, "--disk-reserve", reserve, "--metrics-listen", "127.0.0.1:0"]
    return PoolProcess(data_dir, extra_args=args)  # its log is beside the small disk, not on it


def _gauge(pool: PoolProcess) -> str:
    with urllib.request.urlopen(f"http://{pool.metrics}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return next(line for line in text.splitlines() if line.startswith("hivemind_pool_disk_full "))


def _serving(pool: PoolProcess) -> bool:
    with grpc.insecure_channel(pool.address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def test_a_full_disk_refuses_new_data_keeps_the_rest_working_and_recovers(disk: Path, tmp_path: Path) -> None:
    with _pool(disk, "4M", "2M") as pool:
        assert (disk / "disk-reserve").stat().st_size == 2 * MiB
        pool.add_user("alice", PASSWORD)
        alice = pool.login("alice", PASSWORD)
        worker = FakeWorker(pool.address, pool.join_token(), name="w").connect()
        try:
            running = submit(alice)
            assignment = worker.next_assignment()
            worker.status(assignment, pb.RUNNING)
            assert worker.events(assignment, ["before the disk filled\n"]) == 1
            waiting = submit(alice, cpus=64)  # no worker is that big: it stays QUEUED
            assert "hivemind_pool_disk_full 0.0" in _gauge(pool)

            fill(disk, leave=MiB)  # under the 4 MiB minimum: full

            with pytest.raises(DiskFull, match="the pool's disk is full") as refused:
                submit(alice)
            assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            status = alice.pool_status()
            assert status.disk_full and status.disk_free_bytes < 4 * MiB
            assert "hivemind_pool_disk_full 1.0" in _gauge(pool)
            assert _serving(pool), "reads still work, so health stays SERVING"
            assert not (disk / "disk-reserve").exists(), "the reserve was not given up"
            # Reads and watches.
            assert alice.get_task(running.id).state == pb.RUNNING
            assert {t.id for t in alice.list_tasks().tasks} >= {running.id, waiting.id}
            seen = [e.text for e in alice.watch(running.id, follow=False) if e.kind == pb.TaskEvent.STDOUT]
            assert seen == ["before the disk filled\n"]
            # Cancels and state reports.
            assert alice.cancel_task(waiting.id).state == pb.CANCELLED
            worker.status(assignment, pb.UPLOADING)
            # The worker's new data waits: live events and the result are refused, not dropped.
            with pytest.raises(DiskFull):
                worker.events(assignment, ["while the disk is full\n"], first=2)
            result = make_result_zip(tmp_path / "result.zip", "kept by the worker")
            with pytest.raises(DiskFull, match="the pool's disk is full"):
                worker.finish(assignment, pb.SUCCEEDED, result)
            assert alice.get_task(running.id).state == pb.UPLOADING

            make_room(disk)

            wait_for(lambda: not alice.pool_status().disk_full, timeout=30, what="the pool to recover")
            assert "hivemind_pool_disk_full 0.0" in _gauge(pool)
            assert (disk / "disk-reserve").stat().st_size == 2 * MiB, "the reserve was not taken back"
            assert worker.events(assignment, ["while the disk is full\n"], first=2) == 2
            done = worker.finish(assignment, pb.SUCCEEDED, result)
            assert done.state == pb.SUCCEEDED and done.result_sha256
            assert alice.get_task(submit(alice).id).state in (pb.QUEUED, pb.ASSIGNED)
        finally:
            worker.close()
            alice.close()
        log = pool.log()
    assert "the pool's disk is full" in log and "has room again" in log
    assert "internal error" not in log and "Traceback" not in log, log[-5000:]


def test_writes_that_hit_a_full_disk_in_sqlite_and_in_blobs_answer_disk_full(disk: Path) -> None:
    """No minimum and no reserve: the writes themselves run out of space (ENOSPC in a blob, SQLITE_FULL
    in the database) and still answer DiskFull, never "internal error"."""
    with _pool(disk, "0", "0") as pool:
        admin = pool.admin()
        try:
            fill(disk)
            with pytest.raises(DiskFull, match="the pool's disk is full"):
                admin.submit(manifest(), io.BytesIO(bundle_bytes(extra={"big.bin": b"\x01" * 4 * MiB})))
            database_refused: HiveMindError | None = None
            for index in range(2000):  # the database's last free pages go first
                try:
                    admin.create_user(f"user{index}-{'x' * 40}", "a-long-password-1", False)
                except HiveMindError as exc:
                    database_refused = exc
                    break
            assert isinstance(database_refused, DiskFull), database_refused
            assert admin.list_users()  # reads need no room
            make_room(disk)
            admin.create_user("after-the-disk-had-room", "a-long-password-1", False)
        finally:
            admin.close()
        log = pool.log()
    assert "internal error" not in log and "Traceback" not in log, log[-5000:]


def test_a_pool_started_on_a_full_disk_serves_reads_and_refuses_new_data(disk: Path) -> None:
    pool = _pool(disk, "4M", "2M")
    with pool:
        pool.add_user("alice", PASSWORD)
    fill(disk, leave=MiB)
    with pool:
        alice: PoolClient = pool.login("alice", PASSWORD)
        try:
            assert alice.pool_status().disk_full
            with pytest.raises(DiskFull):
                submit(alice)
            assert list(alice.list_tasks().tasks) == []
            make_room(disk)
            wait_for(lambda: not alice.pool_status().disk_full, timeout=30, what="the pool to recover")
            assert submit(alice).id
        finally:
            alice.close()
