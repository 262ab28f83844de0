"""Declaring workers lost and tasks overdue.

A worker silent for the heartbeat timeout is lost: each task it was running goes back to the queue
spending one retry (LOST once max_retries are spent); a draining worker's tasks go back without
spending one.

A worker whose Connect stream closes (it stopped, restarted, or its connection dropped in a way the
pool can see) is OFFLINE at once: it gets no new work and shows as offline. Its running tasks are
left alone for one heartbeat timeout from that moment, because a worker daemon that restarts comes
back with a Hello that lists the attempts still running in their containers, and those must not be
rerun elsewhere. If it does not come back in time it is declared lost, exactly like a silent one.

Every attempt is bound to its worker's lease (see the Welcome's lease_seconds): the worker's tasks
stop on their own when the pool has not answered it for the lease, which is shorter than the
heartbeat timeout by the lease margin. So when the pool declares a worker lost and reruns its tasks
elsewhere, the old attempts have already stopped: two attempts of a task never run at once.

A running task past its timeout plus a grace period (`timeout_grace`) is ended TIMED_OUT here as a
backstop for a worker that failed to enforce it.
"""

from __future__ import annotations

import contextlib
import logging
import time

from hivemind_nodepool.pool.fleet import Fleet, WorkerEntry
from hivemind_nodepool.pool.lifecycle import TaskBook
from hivemind_nodepool.pool.loops import repeat
from hivemind_nodepool.pool.metrics import PoolMetrics
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.errors import Conflict
from hivemind_nodepool.protocol.states import ON_WORKER_STATES

log = logging.getLogger(__name__)


class Liveness:
    def __init__(
        self,
        book: TaskBook,
        fleet: Fleet,
        metrics: PoolMetrics,
        timeout: float,
        timeout_grace: float,
    ) -> None:
        self.book = book
        self.fleet = fleet
        self.metrics = metrics
        self.timeout = timeout
        self.timeout_grace = timeout_grace

    async def declare_lost(self, worker: WorkerEntry) -> None:
        store = self.book.store
        rows = [r for r in store.tasks_in_states(ON_WORKER_STATES) if r["worker_id"] == worker.worker_id]
        draining = worker.state == pb.WORKER_DRAINING or worker.left_draining
        silent = "silent" if worker.connected or worker.state != pb.WORKER_OFFLINE else "gone"
        worker.state = pb.WORKER_LOST if (rows or worker.connected) else pb.WORKER_OFFLINE
        log.warning(
            "worker %s (%s) %s for over %.0f s: %s, %d task(s) to requeue",
            worker.name,
            worker.worker_id,
            silent,
            self.timeout,
            pb.WorkerState.Name(worker.state),
            len(rows),
        )
        store.update_worker(worker.worker_id, state=worker.state, last_heartbeat_at=worker.last_heartbeat_at)
        if worker.outbox is not None:
            worker.outbox.put_nowait(None)  # end its stream; it must reconnect with a Hello
            worker.outbox = None
        worker.reported = set()
        worker.zombies = set()
        worker.allocations.clear()
        worker.left_draining = False
        for row in rows:
            await self.book.requeue(row, f"worker {worker.name} was lost", spend_retry=not draining)
        if rows or draining:
            self.metrics.workers_lost.inc()

    def overdue(self, worker: WorkerEntry, now: float) -> bool:
        """Online and silent past the timeout, or gone (stream closed) past it with work held."""
        if now - worker.last_seen <= self.timeout:
            return False
        if worker.present:
            return True
        return worker.state == pb.WORKER_OFFLINE and not worker.connected and bool(worker.allocations)

    async def check(self) -> None:
        now = time.monotonic()
        for worker in list(self.fleet.workers.values()):
            if self.overdue(worker, now):
                await self.declare_lost(worker)
        wall = time.time()
        for row in self.book.store.tasks_in_states([pb.RUNNING, pb.UPLOADING]):
            started = row["started_at"]
            if started and wall > started + row["timeout_seconds"] + self.timeout_grace:
                with contextlib.suppress(Conflict):
                    await self.book.cancel(
                        row, f"timed out after {row['timeout_seconds']} s", state=pb.TIMED_OUT
                    )

    async def run(self) -> None:
        period = max(0.2, min(1.0, self.timeout / 5))
        await repeat(self.check, period, "liveness check failed; retrying", logger=log)
