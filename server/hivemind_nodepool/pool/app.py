"""The pool's parts wired together: one object the servicers, scheduler and loops share."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from typing import Any

from hivemind_nodepool.pool import views
from hivemind_nodepool.pool.auth import Authenticator
from hivemind_nodepool.pool.blobs import BlobStore
from hivemind_nodepool.pool.config import PoolSettings
from hivemind_nodepool.pool.disk import DiskGuard
from hivemind_nodepool.pool.events import TaskNotifier
from hivemind_nodepool.pool.feed import TaskFeedHub
from hivemind_nodepool.pool.fleet import Fleet, WorkerEntry
from hivemind_nodepool.pool.lifecycle import TaskBook, amount_of
from hivemind_nodepool.pool.liveness import Liveness
from hivemind_nodepool.pool.metrics import PoolMetrics
from hivemind_nodepool.pool.retention import Collector
from hivemind_nodepool.pool.revocation import Revocations
from hivemind_nodepool.pool.scheduler import Scheduler
from hivemind_nodepool.pool.store import Store
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.states import ON_WORKER_STATES, worker_present

log = logging.getLogger(__name__)


class Pool:
    def __init__(self, settings: PoolSettings) -> None:
        self.settings = settings
        data = settings.data_dir
        data.mkdir(parents=True, exist_ok=True)
        self.disk = DiskGuard(data, settings.disk_min_free, settings.disk_reserve)
        self.store = Store(data, on_disk_full=self.disk.hit)
        self.blobs = BlobStore(data / "blobs", self.disk)
        self.metrics = PoolMetrics()
        self.metrics.disk_full.set_function(lambda: float(self.disk.full))
        self.notifier = TaskNotifier()
        self.fleet = Fleet()
        self.book = TaskBook(self.store, self.fleet, self.notifier, settings, self.metrics)
        self.feed = TaskFeedHub(
            self.store, lambda row: self.describe_task(row, timeline=False), settings.feed_queue_limit
        )
        self.notifier.add_listener(self.feed.changed)
        self.auth = Authenticator(self.store)
        self.revocations = Revocations(
            self.store, self.auth, self.book, self.fleet, settings.feed_auth_recheck
        )
        self.collector = Collector(self.store, self.blobs, settings.retention, settings.gc_interval)
        self.scheduler = Scheduler(self.book, self.fleet, self.metrics, settings.schedule_interval)
        self.liveness = Liveness(
            self.book, self.fleet, self.metrics, settings.heartbeat_timeout, settings.timeout_grace
        )
        self.started_at = time.time()
        self.health: Any = None  # the gRPC health servicer, once serving
        self.tasks: list[asyncio.Task[None]] = []  # background loops, once serving
        self.stopping = False  # set at shutdown: streams the pool ends are not workers leaving
        self._recover()

    def describe_task(self, row: sqlite3.Row, timeline: bool = True) -> pb.Task:
        """The task as the wire shows it (a pb.Task), with its worker's name."""
        worker = self.fleet.get(row["worker_id"]) if row["worker_id"] else None
        name = worker.name if worker is not None else ""
        if row["worker_id"] and worker is None:
            found = self.store.get_worker(row["worker_id"])
            name = found["name"] if found is not None else ""
        return views.task(row, self.store.timeline(row["id"]) if timeline else None, name)

    def _recover(self) -> None:
        """After a restart: drop half-written uploads; every worker that was online, or still holds a
        task, gets one heartbeat timeout to reconnect before its tasks are requeued."""
        removed = self.blobs.clean_tmp()
        if removed:
            log.info("removed %d half-written upload(s) left by the last run", removed)
        active = self.store.tasks_in_states(ON_WORKER_STATES)
        holders = {row["worker_id"] for row in active}
        for row in self.store.list_workers():
            if row["revoked_at"]:
                continue  # the recheck's first pass requeues what it held
            present = worker_present(row["state"])
            if present or row["id"] in holders:
                self.fleet.add(WorkerEntry.from_row(row, state=None if present else pb.WORKER_ONLINE))
        for row in active:
            holder = self.fleet.get(row["worker_id"])
            if holder is not None:
                holder.allocations[(row["id"], int(row["attempt"]))] = amount_of(row)

    def close(self) -> None:
        self.metrics.stop()
        self.store.close()
