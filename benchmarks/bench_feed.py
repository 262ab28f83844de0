"""The pushed task feed (WatchTasks): what open feeds cost submissions, and how soon a change arrives.

1. Submissions per second (8 client threads) with no feed open, against the same with one feed
   open (a Jupyter server's) and with 20 (10 of the submitting user's, 10 admin all_users feeds),
   side by side in one run. The feeds are read by threads of this process, beside the submitters.
2. Push latency: from a submission's answer to its task message on an open feed, median and 95th
   percentile (the message is usually on its way before the answer arrives: both follow the commit).

    .venv/bin/python benchmarks/bench_feed.py [--quick]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from harness.pool import PoolProcess  # noqa: E402

from hivemind_nodepool.client import PoolClient  # noqa: E402
from hivemind_nodepool.proto import nodepool_pb2 as pb  # noqa: E402
from hivemind_nodepool.protocol.errors import Cancelled  # noqa: E402

PASSWORD = "benchmark-password"
NOTEBOOK = '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}'


def bundle() -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("main.ipynb", NOTEBOOK)
    return buffer.getvalue()


def manifest() -> pb.Manifest:
    # Larger than any worker (there is none): tasks stay queued, the queue only grows.
    return pb.Manifest(
        entry_notebook="main.ipynb",
        parameters_json="{}",
        max_retries=-1,
        resources=pb.Resources(cpus=1, memory_bytes=64 * 1024**2),
    )


class Reader:
    """One open feed, read in a thread; notes when each task id first arrives."""

    def __init__(self, client: PoolClient, all_users: bool) -> None:
        self.client = client
        self.arrived: dict[str, float] = {}
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(all_users,), daemon=True)
        self.thread.start()

    def _run(self, all_users: bool) -> None:
        try:
            for message in self.client.watch_tasks(all_users=all_users):
                if message.WhichOneof("body") == "ready":
                    self.ready.set()
                elif message.WhichOneof("body") == "task":
                    self.arrived.setdefault(message.task.id, time.perf_counter())
        except Cancelled:
            pass

    def close(self) -> None:
        self.client.close()
        self.thread.join(timeout=10)


def submissions_per_second(clients: list[PoolClient], count: int, data: bytes) -> tuple[float, dict]:
    answered: dict[str, float] = {}

    def one(index: int) -> None:
        task = clients[index % len(clients)].submit(manifest(), io.BytesIO(data))
        answered[task.id] = time.perf_counter()

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(clients)) as pool:
        list(pool.map(one, range(count)))
    return count / (time.perf_counter() - started), answered


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small workloads, for a smoke run")
    args = parser.parse_args()
    count = 200 if args.quick else 1000
    data = bundle()
    with tempfile.TemporaryDirectory() as folder:
        pool = PoolProcess(Path(folder) / "pool").start()
        try:
            pool.add_user("alice", PASSWORD)
            admin = pool.admin()
            clients = [pool.login("alice", PASSWORD) for _ in range(8)]
            submissions_per_second(clients, 50, data)  # warm up
            quiet, _ = submissions_per_second(clients, count, data)
            one = Reader(pool.login("alice", PASSWORD), False)
            one.ready.wait(30)
            single, _ = submissions_per_second(clients, count, data)
            one.close()
            readers = [Reader(pool.login("alice", PASSWORD), False) for _ in range(10)]
            readers += [Reader(pool.client(token=admin.token), True) for _ in range(10)]
            for reader in readers:
                reader.ready.wait(30)
            watched, answered = submissions_per_second(clients, count, data)
            time.sleep(1.0)
            delays = sorted(
                (reader.arrived[task_id] - at) * 1000
                for reader in readers
                for task_id, at in answered.items()
                if task_id in reader.arrived
            )
            missing = sum(1 for r in readers for t in answered if t not in r.arrived)
            for reader in readers:
                reader.close()
            print(f"submissions/s, no feed open:      {quiet:8.1f}")
            print(f"submissions/s, 1 feed open:       {single:8.1f}   ratio {single / quiet:.2f}")
            print(f"submissions/s, 20 feeds open:     {watched:8.1f}   ratio {watched / quiet:.2f}")
            print(
                f"push delay after the answer (ms): median {statistics.median(delays):.1f}, "
                f"p95 {delays[int(len(delays) * 0.95)]:.1f} over {len(delays)} deliveries; "
                f"{missing} not delivered"
            )
        finally:
            pool.stop()


if __name__ == "__main__":
    main()
