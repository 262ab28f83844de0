"""Benchmarks of the NodePool, each printed with a baseline measured side by side in the same run.

1. Submissions per second (small bundles, 8 client threads), against WhoAmI calls per second on
   the same connection setup: how close a durable submit comes to gRPC's round-trip floor.
2. Dispatches per second: 50 simulated workers take and finish tasks from a full queue.
3. The pool's CPU cost of 1,000 simulated workers heartbeating every 5 s (the default),
   against the same pool idle. The simulated workers share a few channels and one heartbeat
   thread, so the load generator itself stays light beside the pool.
4. A 1 GiB bundle uploaded and its result downloaded, against copying the same file on disk.

    .venv/bin/python benchmarks/bench_pool.py [--quick]

--quick shrinks every workload (for a smoke run); the figures in docs/benchmarks.md are full runs.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import queue
import shutil
import statistics
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from harness.fake_worker import FakeWorker, make_facts  # noqa: E402
from harness.pool import PoolProcess  # noqa: E402

from hivemind_nodepool.client import PoolClient  # noqa: E402
from hivemind_nodepool.proto import nodepool_pb2 as pb  # noqa: E402

PASSWORD = "benchmark-password"


def tiny_bundle(folder: Path) -> Path:
    path = folder / "tiny.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("main.ipynb", '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    return path


def manifest(cpus: float = 0.5) -> pb.Manifest:
    return pb.Manifest(
        name="bench",
        entry_notebook="main.ipynb",
        parameters_json="{}",
        resources=pb.Resources(cpus=cpus, memory_bytes=64 * 1024**2),
        max_retries=-1,
    )


def rate(
    count: int, threads: int, work: Callable[[PoolClient], None], make: Callable[[], PoolClient]
) -> float:
    """Calls per second of `work`, `count` calls spread over `threads` clients."""
    clients = [make() for _ in range(threads)]
    for client in clients:
        client.whoami()  # connect before the clock starts
    per_thread = count // threads

    def loop(client: PoolClient) -> None:
        for _ in range(per_thread):
            work(client)

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(loop, clients))
    elapsed = time.perf_counter() - start
    for client in clients:
        client.close()
    return per_thread * threads / elapsed


def bench_submissions(pool: PoolProcess, token: str, folder: Path, count: int) -> None:
    bundle = tiny_bundle(folder)
    make = lambda: PoolClient(pool.address, token=token)  # noqa: E731
    floor = rate(count, 8, lambda c: c.whoami(), make)
    submits = rate(count, 8, lambda c: c.submit(manifest(), bundle), make)
    print(
        f"submissions: {submits:8.0f}/s   WhoAmI floor: {floor:8.0f}/s   "
        f"ratio {submits / floor:.2f} of the floor   (target 500/s)"
    )


def bench_dispatch(pool: PoolProcess, token: str, folder: Path, tasks: int, workers: int) -> None:
    bundle = tiny_bundle(folder)
    user = PoolClient(pool.address, token=token)
    with ThreadPoolExecutor(8) as submitters:
        list(submitters.map(lambda _: user.submit(manifest(), bundle), range(tasks)))
    join = pool.join_token()
    fleet = [
        FakeWorker(pool.address, join, name=f"bench-{i}", cpus=4, heartbeat_interval=5.0)
        for i in range(workers)
    ]
    done = threading.Semaphore(0)
    stop = threading.Event()

    def work(worker: FakeWorker) -> None:
        while not stop.is_set():
            try:
                assignment = worker.next_assignment(timeout=0.5)
            except TimeoutError:
                continue
            worker.run_to_success(assignment)
            done.release()

    start = time.perf_counter()
    for worker in fleet:
        worker.connect()
    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in fleet]
    for thread in threads:
        thread.start()
    for _ in range(tasks):
        done.acquire(timeout=120)
    elapsed = time.perf_counter() - start
    stop.set()
    for thread in threads:
        thread.join()
    for worker in fleet:
        worker.close()
    user.close()
    print(
        f"dispatches:  {tasks / elapsed:8.0f}/s   ({tasks} tasks through {workers} workers, each "
        f"assigned, run and finished; target 200/s)"
    )


def cpu_share(pid: int, seconds: float) -> float:
    process = psutil.Process(pid)
    before = process.cpu_times()
    time.sleep(seconds)
    after = process.cpu_times()
    return ((after.user - before.user) + (after.system - before.system)) / seconds


class HeartbeatCrowd:
    """Many simulated workers, cheap enough that 1,000 fit beside the pool on 2 cores: a few shared
    channels (the credential is set per stream) and one thread that sends every worker's heartbeat
    on time. Each stream still has a thread that reads the pool's acks (unread, they would stall
    the shared connection through HTTP/2 flow control); it sleeps between them."""

    def __init__(self, address: str, join_token: str, count: int, interval: float, channels: int = 4) -> None:
        self.interval = interval
        self.clients = [PoolClient(address) for _ in range(channels)]
        self.outboxes: list[queue.SimpleQueue[pb.WorkerMessage | None]] = []
        self.calls: list[Any] = []
        self.stop = threading.Event()
        for i in range(count):
            client = self.clients[i % channels]
            facts = make_facts(hostname=f"hb-{i}")
            client.register_worker(join_token, f"hb-{i}", facts)  # sets client.token for the stream
            outbox: queue.SimpleQueue[pb.WorkerMessage | None] = queue.SimpleQueue()
            outbox.put(pb.WorkerMessage(hello=pb.Hello(facts=facts)))
            self.outboxes.append(outbox)
            call = client.connect(iter(outbox.get, None))
            self.calls.append(call)
            threading.Thread(target=self._drain, args=(call,), daemon=True).start()
        self.beater = threading.Thread(target=self._beat, daemon=True)
        self.beater.start()

    @staticmethod
    def _drain(call: Any) -> None:
        with contextlib.suppress(grpc.RpcError):
            for _ in call:
                pass

    def _beat(self) -> None:
        gap = self.interval / max(1, len(self.outboxes))  # spread evenly, like independent machines
        beat = pb.WorkerMessage(heartbeat=pb.Heartbeat())
        while not self.stop.is_set():
            for outbox in self.outboxes:
                outbox.put(beat)
                if self.stop.wait(gap):
                    return

    def close(self) -> None:
        self.stop.set()
        for outbox in self.outboxes:
            outbox.put(None)
        for call in self.calls:
            call.cancel()
        for client in self.clients:
            client.close()


def bench_heartbeats(pool: PoolProcess, workers: int, window: float) -> None:
    idle = cpu_share(pool.pid, window)
    crowd = HeartbeatCrowd(pool.address, pool.join_token(), workers, interval=5.0)
    try:
        time.sleep(6)  # let registration settle into steady heartbeats
        busy = cpu_share(pool.pid, window)
        # Read from the pool's database: the simulated workers' streams fill the one connection
        # they share up to the pool's per-connection stream limit (real workers each have their own).
        status = json.loads(pool.admin_cli("status", "--json").stdout)
        online = sum(1 for w in status["workers"] if w["state"] == "WORKER_ONLINE")
    finally:
        crowd.close()
    print(
        f"heartbeats:  {busy * 100:7.1f}% of one core with {online} workers online "
        f"(idle pool: {idle * 100:.1f}%; target under 20%)"
    )


def bench_transfer(pool: PoolProcess, token: str, folder: Path, size: int) -> None:
    payload = folder / "big.bin"
    with open(payload, "wb") as handle:
        block = os.urandom(1024 * 1024)
        for _ in range(size // len(block)):
            handle.write(block)
    bundle = folder / "big.zip"
    with zipfile.ZipFile(bundle, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("main.ipynb", '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
        archive.write(payload, "data.bin")
    payload.unlink()

    def disk_copy() -> float:
        start = time.perf_counter()
        copy = folder / "copy.zip"
        shutil.copyfile(bundle, copy)
        with open(copy, "rb+") as handle:
            os.fsync(handle.fileno())
        elapsed = time.perf_counter() - start
        copy.unlink()
        return elapsed

    copies = [disk_copy() for _ in range(2)]
    client = PoolClient(pool.address, token=token)
    start = time.perf_counter()
    task = client.submit(manifest(), bundle)
    upload = time.perf_counter() - start
    # Serve the bundle back as a result: a fake worker uploads it, the user downloads it.
    worker = FakeWorker(pool.address, pool.join_token(), name="transfer", cpus=4).connect()
    assignment = worker.next_assignment(timeout=30)
    worker.run_to_success(assignment, result=bundle)
    start = time.perf_counter()
    fetched = client.fetch_result(task.id, folder / "fetched.zip")
    download = time.perf_counter() - start
    same = hashlib.sha256(fetched.read_bytes()).hexdigest() == hashlib.sha256(bundle.read_bytes()).hexdigest()
    worker.close()
    client.close()
    copy = statistics.median(copies)
    mib = bundle.stat().st_size / 1024**2
    print(
        f"upload:      {mib / upload:8.0f} MiB/s  {upload / copy:.2f}x a disk copy ({mib / copy:.0f} MiB/s)"
        f"   (target within 3x)"
    )
    print(
        f"download:    {mib / download:8.0f} MiB/s  {download / copy:.2f}x a disk copy   (identical: {same})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small workloads, for a smoke run")
    args = parser.parse_args()
    quick = args.quick
    with tempfile.TemporaryDirectory(prefix="hivemind-bench-") as tmp:
        folder = Path(tmp)
        pool = PoolProcess(
            folder / "pool",
            heartbeat_interval=5.0,
            heartbeat_timeout=15.0,
            extra_args=["--max-bundle-size", "4G"],
        ).start()
        try:
            pool.add_user("bench", PASSWORD)
            token = pool.login("bench", PASSWORD).token or ""
            print(f"NodePool benchmarks ({os.cpu_count()} cores; pool pid {pool.pid})")
            bench_submissions(pool, token, folder, 200 if quick else 2000)
            bench_dispatch(pool, token, folder, 100 if quick else 1000, 10 if quick else 50)
            bench_heartbeats(pool, 100 if quick else 1000, 5 if quick else 20)
            bench_transfer(pool, token, folder, (64 if quick else 1024) * 1024**2)
        finally:
            pool.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
