"""In-process pool parts for unit tests: workers as the Fleet holds them, and a TaskBook on a real
SQLite store in a temp folder (no server, no subprocess)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from hivemind_nodepool.pool.config import PoolSettings
from hivemind_nodepool.pool.events import TaskNotifier
from hivemind_nodepool.pool.fleet import Amount, Fleet, WorkerEntry
from hivemind_nodepool.pool.lifecycle import TaskBook
from hivemind_nodepool.pool.metrics import PoolMetrics
from hivemind_nodepool.pool.scheduler import Scheduler
from hivemind_nodepool.pool.store import Store
from hivemind_nodepool.proto import nodepool_pb2 as pb

GiB = 1024**3
BUNDLE = "b" * 64


def worker(
    worker_id: str,
    cpus: int = 4,
    memory: int = 8 * GiB,
    gpus: int = 0,
    labels: dict[str, str] | None = None,
    state: int = pb.WORKER_ONLINE,
    connected: bool = True,
    used: Amount | None = None,
    task_disk: int = 0,
) -> WorkerEntry:
    """A worker as the Fleet knows it; `used` is held by an attempt already; `task_disk` is its
    per-task disk limit (0: it states none)."""
    facts = pb.MachineFacts(hostname=worker_id, cpu_cores=cpus, memory_bytes=memory, labels=labels or {})
    facts.capacity.disk_bytes = task_disk
    facts.gpus.extend(pb.Gpu(index=i, name="gpu") for i in range(gpus))
    entry = WorkerEntry(worker_id, worker_id, facts, state=state)
    if connected:
        entry.outbox = asyncio.Queue()
    if used is not None:
        entry.allocations[("t-earlier", 1)] = used
    return entry


def manifest(
    cpus: float = 1,
    memory: int = GiB,
    gpus: int = 0,
    priority: int = 0,
    labels: dict[str, str] | None = None,
    disk: int = 0,
) -> pb.Manifest:
    return pb.Manifest(
        entry_notebook="main.ipynb",
        resources=pb.Resources(cpus=cpus, memory_bytes=memory, gpus=gpus, disk_bytes=disk),
        priority=priority,
        labels=labels or {},
        max_retries=2,
    )


class Pool:
    """A TaskBook, its Fleet and a Scheduler over one store."""

    def __init__(self, data_dir: Path) -> None:
        self.store = Store(data_dir)
        self.fleet = Fleet()
        self.book = TaskBook(
            self.store, self.fleet, TaskNotifier(), PoolSettings(data_dir=data_dir), PoolMetrics()
        )
        self.scheduler = Scheduler(self.book, self.fleet, PoolMetrics(), interval=1.0)
        self._clock = 1_000_000.0

    def join(self, entry: WorkerEntry) -> WorkerEntry:
        """Add a worker; a connected one gets its Connect stream (as a Hello would)."""
        connected = entry.outbox is not None
        entry.outbox = None
        self.fleet.add(entry)
        if connected:
            self.fleet.attach(entry)
        return entry

    async def submit(self, owner: str, task: pb.Manifest | None = None) -> str:
        """A queued task; each one queued a second after the one before, so age order is certain."""
        row = await self.book.submit(owner, task or manifest(), BUNDLE, 100)
        self._clock += 1
        await self.store.awrite(
            lambda db: db.execute("UPDATE tasks SET queued_at = ? WHERE id = ?", (self._clock, row["id"]))
        )
        return str(row["id"])

    def task(self, task_id: str) -> sqlite3.Row:
        row = self.store.get_task(task_id)
        assert row is not None
        return row

    def states(self, *task_ids: str) -> list[str]:
        return [pb.TaskState.Name(self.task(t)["state"]) for t in task_ids]
