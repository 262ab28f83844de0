"""A 200 MB bundle up and a 200 MB result down, while the pool's memory stays flat."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psutil
import pytest
from harness import FakeWorker, PoolProcess

from hivemind_nodepool.proto import nodepool_pb2 as pb

from .helpers import manifest

MB = 1024 * 1024


def big_zip(path: Path, megabytes: int) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("main.ipynb", '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
        with archive.open("data.bin", "w", force_zip64=True) as handle:
            block = os.urandom(MB)
            for _ in range(megabytes):
                handle.write(block)
    return path


class PeakRss:
    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.slow
def test_200mb_up_and_down_with_flat_memory(pool: PoolProcess, tmp_path: Path) -> None:
    admin = pool.admin()
    worker = FakeWorker(pool.address, pool.join_token()).connect()
    try:
        bundle = big_zip(tmp_path / "bundle.zip", 200)
        size = bundle.stat().st_size
        baseline = psutil.Process(pool.pid).memory_info().rss
        with PeakRss(pool.pid) as up:
            started = time.perf_counter()
            task = admin.submit(manifest(), bundle)
            upload_s = time.perf_counter() - started
        assert task.bundle_size == size
        assignment = worker.next_assignment()
        worker.client.fetch_bundle(task.id, assignment.attempt, tmp_path / "fetched.zip")
        assert (tmp_path / "fetched.zip").stat().st_size == size
        for state in (pb.PREPARING, pb.RUNNING, pb.UPLOADING):
            worker.status(assignment, state)
        worker.finish(assignment, pb.SUCCEEDED, bundle)  # any safe ZIP will do as a result
        with PeakRss(pool.pid) as down:
            started = time.perf_counter()
            admin.fetch_result(task.id, tmp_path / "result.zip")
            download_s = time.perf_counter() - started
        assert (tmp_path / "result.zip").stat().st_size == size
        grew_up = (up.peak - baseline) / MB
        grew_down = (down.peak - baseline) / MB
        print(
            f"200 MB: upload {size / MB / upload_s:.0f} MB/s, download {size / MB / download_s:.0f} MB/s; "
            f"pool RSS {baseline / MB:.0f} MB at rest, +{grew_up:.0f} MB peak up, "
            f"+{grew_down:.0f} MB peak down"
        )
        assert grew_up < 64 and grew_down < 64  # a whole-bundle buffer would add 200 MB
    finally:
        worker.close()
