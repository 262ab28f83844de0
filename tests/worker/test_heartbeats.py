"""Heartbeats go out on their own schedule: a slow environment build or a slow bundle download does
not delay them. The worker's --index-url points uv at a package index on 127.0.0.1 that holds each request
for a while, so the build is slow for certain; the pool's bundle rate limit makes the download slow
for certain. Meanwhile the pool's record of the worker's last heartbeat must keep advancing at about
the heartbeat interval."""

from __future__ import annotations

import http.server
import itertools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.pool import PoolProcess
from harness.worker import WorkerProcess
from harness.worker_fixtures import remove_task_containers

from hivemind_nodepool.proto import nodepool_pb2 as pb

from .helpers import MiB, bundle, notebook, submit, user, wait_for, wait_state

HOLD_SECONDS = 8.0
# Far below the time after which the pool declares a worker lost (15 s by default); with a heartbeat
# every 0.5 s a gap this long means heartbeats were held up.
MAX_GAP = 5.0


def _gaps(beats: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(sorted(set(beats)))]


class _SlowIndex(http.server.ThreadingHTTPServer):
    daemon_threads = True
    held = threading.Event()
    released = threading.Event()


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    server: _SlowIndex

    def do_GET(self) -> None:
        self.server.held.set()
        time.sleep(HOLD_SECONDS)
        self.server.released.set()
        self.send_error(404, "no such package")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def slow_index() -> Iterator[_SlowIndex]:
    server = _SlowIndex(("127.0.0.1", 0), _SlowHandler)
    server.held, server.released = threading.Event(), threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "executor", ["local", pytest.param("docker", marks=[pytest.mark.docker, pytest.mark.slow])]
)
def test_heartbeats_keep_going_during_a_slow_build(
    pool, slow_index: _SlowIndex, executor: str, request: pytest.FixtureRequest
) -> None:
    if executor == "docker":
        request.getfixturevalue("docker_engine")
    alice = user(pool)
    port = slow_index.server_address[1]
    index = ["--index-url", f"http://127.0.0.1:{port}/simple", "--uv-cache", str(pool.data_dir.parent / "uv")]
    worker = WorkerProcess(pool, executor=executor, name=f"beats-{executor}", extra_args=index).start()
    try:
        # A comment makes the requirements new, so the environment is really built.
        requirements = f"hivemind-no-such-package  # {os.urandom(6).hex()}\n".encode()
        task = submit(
            alice, bundle(notebook("print('never')"), {"requirements.txt": requirements}), max_retries=0
        )
        wait_for(slow_index.held.is_set, 120, "the build to ask the slow index")
        seen: list[tuple[float, float]] = []  # (when we looked, the pool's last heartbeat)
        with pool.admin() as admin:
            while not slow_index.released.is_set():
                record = next(w for w in admin.list_workers() if w.id == worker.worker_id)
                assert record.state == pb.WORKER_ONLINE, pb.WorkerState.Name(record.state)
                seen.append((time.monotonic(), record.last_heartbeat_at))
                time.sleep(0.1)
        beats = sorted({at for _, at in seen})
        gaps = _gaps(beats)
        print(
            f"{executor}: {len(beats)} heartbeats in {seen[-1][0] - seen[0][0]:.1f}s while the build "
            f"waited; largest gap {max(gaps, default=0):.2f}s"
        )
        assert len(beats) >= 4, f"the pool's last heartbeat barely moved during the build: {beats}"
        assert max(gaps) < MAX_GAP, gaps
        final = wait_state(alice, task.id, timeout=180)
        assert final.state == pb.FAILED and "environment could not be built" in final.error, final.error
    finally:
        worker.stop()
        remove_task_containers(worker.worker_id)


def test_heartbeats_keep_going_during_a_throttled_bundle_download(tmp_path: Path) -> None:
    size, rate = 5 * MiB, 512 * 1024  # about ten seconds of download
    with PoolProcess(tmp_path / "pool", extra_args=["--bundle-rate-limit", str(rate)]) as pool:
        alice = user(pool)
        worker = WorkerProcess(pool, executor="local", name="beats-download").start()
        data = os.urandom(size)  # does not compress: the whole size goes over the wire
        task = submit(alice, bundle(notebook("print('ran')"), {"data.bin": data}), max_retries=0)
        wait_for(lambda: alice.get_task(task.id).state == pb.PREPARING, 60, "the download to begin")
        seen: list[tuple[float, float]] = []  # (when we looked, the pool's last heartbeat)
        with pool.admin() as admin:
            while alice.get_task(task.id).state == pb.PREPARING:
                record = next(w for w in admin.list_workers() if w.id == worker.worker_id)
                assert record.state == pb.WORKER_ONLINE, pb.WorkerState.Name(record.state)
                seen.append((time.monotonic(), record.last_heartbeat_at))
                time.sleep(0.1)
        window = seen[-1][0] - seen[0][0] if seen else 0.0
        beats = [at for _, at in seen]
        gaps = _gaps(beats)
        print(
            f"{len(set(beats))} heartbeats in {window:.1f}s of a download paced at {rate // 1024} KiB/s; "
            f"largest gap {max(gaps, default=0):.2f}s"
        )
        assert window >= size / rate / 2, "the download was not slow: the rate limit did not apply"
        assert len(set(beats)) >= 4, f"the pool's last heartbeat barely moved during the download: {beats}"
        assert max(gaps) < MAX_GAP, gaps
        final = wait_state(alice, task.id, timeout=120)
        assert final.state == pb.SUCCEEDED, final.error
