"""The task state machine: every transition is one transaction that updates the task, stores a STATE
event (the timeline), wakes watchers and the scheduler, and keeps worker allocations right."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sqlite3
import time
from typing import Any

from hivemind_nodepool.pool.config import PoolSettings
from hivemind_nodepool.pool.events import TaskNotifier
from hivemind_nodepool.pool.fleet import Amount, Fleet, WorkerEntry
from hivemind_nodepool.pool.metrics import PoolMetrics
from hivemind_nodepool.pool.store import Store
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.errors import Conflict, NotFound
from hivemind_nodepool.protocol.states import ON_WORKER_STATES, TERMINAL_STATES, state_name

log = logging.getLogger(__name__)

# Forward moves a worker may report while it runs an attempt.
_ORDER: dict[int, int] = {pb.ASSIGNED: 0, pb.PREPARING: 1, pb.RUNNING: 2, pb.UPLOADING: 3}


def new_task_id() -> str:
    return "t-" + secrets.token_hex(6)


def amount_of(row: sqlite3.Row) -> Amount:
    return Amount(float(row["cpus"]), int(row["memory_bytes"]), int(row["gpus"]))


def fenced(row: sqlite3.Row, worker_id: str, attempt: int) -> sqlite3.Row:
    """The row, when `worker_id` runs its current attempt `attempt`; FAILED_PRECONDITION when stale."""
    if row["worker_id"] != worker_id or int(row["attempt"]) != attempt:
        raise Conflict(
            f"attempt {attempt} of task {row['id']} is stale: the task's current attempt is "
            f"{row['attempt']}; stop it"
        )
    if row["state"] not in ON_WORKER_STATES:
        raise Conflict(f"task {row['id']} has ended ({state_name(row['state'])}); stop attempt {attempt}")
    return row


def is_partial_result(row: sqlite3.Row, worker_id: str, header: pb.ResultHeader) -> bool:
    """A cancelled task's result so far: the attempt that was running when the user cancelled sends
    outcome CANCELLED while the task is CANCELLED and holds no result yet. The pool keeps the blob
    (the notebook up to the stop, outputs/) and changes nothing else."""
    return (
        not header.requeue
        and header.outcome == pb.CANCELLED
        and row["state"] == pb.CANCELLED
        and row["worker_id"] == worker_id
        and int(row["attempt"]) == header.attempt
        and not row["result_sha256"]
        and not row["blobs_expired"]
    )


def fenced_upload(row: sqlite3.Row, worker_id: str, header: pb.ResultHeader) -> sqlite3.Row:
    """`fenced` for an attempt's outcome, which also lets a cancelled attempt's partial result in."""
    if is_partial_result(row, worker_id, header):
        return row
    return fenced(row, worker_id, header.attempt)


def _row(db: sqlite3.Connection, task_id: str) -> sqlite3.Row:
    """The task as the write transaction sees it (a caller's copy may be stale by now)."""
    row: sqlite3.Row | None = db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
    if row is None:
        raise NotFound(f"no task {task_id!r}")
    return row


class TaskBook:
    """Transitions are coroutines: each hands one job to the store's writer and returns after its
    commit. A job re-reads the task inside the transaction and checks its precondition there,
    because other transitions may have committed since the caller looked. In-memory effects
    (allocations, messages to workers, wake-ups) follow the commit, on the event loop."""

    def __init__(
        self, store: Store, fleet: Fleet, notifier: TaskNotifier, settings: PoolSettings, metrics: PoolMetrics
    ) -> None:
        self.store = store
        self.fleet = fleet
        self.notifier = notifier
        self.settings = settings
        self.metrics = metrics
        self.wake = asyncio.Event()  # set to ask the scheduler for a cycle now

    # -- helpers --------------------------------------------------------------------------------

    def require_task(self, task_id: str) -> sqlite3.Row:
        if not task_id or len(task_id) > 64:
            raise NotFound("no task with that id (task ids are short, like t-1a2b3c4d5e6f)")
        row = self.store.get_task(task_id)
        if row is None:
            raise NotFound(f"no task {task_id!r}")
        return row

    def _transition(
        self, db: sqlite3.Connection, row: sqlite3.Row, state: int, message: str, **fields: Any
    ) -> None:
        now = time.time()
        if state in TERMINAL_STATES:
            fields.setdefault("finished_at", now)
        if state == pb.RUNNING and row["started_at"] is None:
            fields.setdefault("started_at", now)
        self.store.update_task(db, row["id"], state=state, **fields)
        attempt = int(fields.get("attempt", row["attempt"]))
        worker_id = str(fields.get("worker_id", row["worker_id"]))
        self.store.append_event(
            db,
            row["id"],
            pb.TaskEvent.STATE,
            state=state,
            text=message,
            attempt=attempt,
            worker_id=worker_id,
            at=now,
        )

    def _after(self, task_id: str) -> None:
        self.notifier.notify(task_id)
        self.wake.set()

    def check_attempt(self, worker_id: str, task_id: str, attempt: int) -> sqlite3.Row:
        """The task, when this worker runs its current attempt; FAILED_PRECONDITION when stale."""
        return fenced(self.require_task(task_id), worker_id, attempt)

    def check_upload(self, worker_id: str, header: pb.ResultHeader) -> sqlite3.Row:
        """The task, when this worker may send this outcome (see `fenced_upload`)."""
        return fenced_upload(self.require_task(header.task_id), worker_id, header)

    # -- transitions ----------------------------------------------------------------------------

    async def submit(
        self, owner: str, manifest: pb.Manifest, sha256: str, size: int, retry_of: str = ""
    ) -> sqlite3.Row:
        """Store a new QUEUED task; returns its row once committed (durable)."""
        task_id = new_task_id()
        res = manifest.resources

        def job(db: sqlite3.Connection) -> sqlite3.Row:
            now = time.time()
            db.execute(
                "INSERT OR IGNORE INTO blobs (sha256, size, created_at) VALUES (?, ?, ?)", (sha256, size, now)
            )
            self.store.insert_task(
                db,
                {
                    "id": task_id,
                    "owner": owner,
                    "manifest": manifest.SerializeToString(),
                    "state": pb.QUEUED,
                    "priority": manifest.priority,
                    "cpus": res.cpus,
                    "memory_bytes": res.memory_bytes,
                    "gpus": res.gpus,
                    "bundle_sha256": sha256,
                    "bundle_size": size,
                    "created_at": now,
                    "updated_at": now,
                    "queued_at": now,
                    "max_retries": manifest.max_retries,
                    "timeout_seconds": manifest.timeout_seconds,
                    "retry_of": retry_of,
                },
            )
            message = f"submitted by {owner}" + (f" (a retry of {retry_of})" if retry_of else "")
            self.store.append_event(db, task_id, pb.TaskEvent.STATE, state=pb.QUEUED, text=message, at=now)
            return _row(db, task_id)

        row = await self.store.awrite(job)
        self._after(task_id)
        return row

    async def assign_many(
        self, placements: list[tuple[sqlite3.Row, WorkerEntry]], reasons: list[tuple[sqlite3.Row, str]]
    ) -> int:
        """One scheduling cycle's decisions in one transaction: assignments, and the reasons of the
        tasks left waiting. Capacity is reserved before the commit so nothing else is placed on it;
        a task that changed meanwhile (cancelled) is skipped and its reservation freed."""
        planned: list[tuple[sqlite3.Row, WorkerEntry, int]] = []
        for row, worker in placements:
            attempt = int(row["attempt"]) + 1
            worker.allocations[(row["id"], attempt)] = amount_of(row)
            planned.append((row, worker, attempt))

        def job(db: sqlite3.Connection) -> list[bool]:
            done = []
            for row, worker, attempt in planned:
                current = _row(db, row["id"])
                if current["state"] != pb.QUEUED or int(current["attempt"]) + 1 != attempt:
                    done.append(False)
                    continue
                self._transition(
                    db,
                    current,
                    pb.ASSIGNED,
                    f"assigned to worker {worker.name}",
                    attempt=attempt,
                    worker_id=worker.worker_id,
                    pending_reason="",
                )
                db.execute(
                    "INSERT INTO attempts (task_id, attempt, worker_id, assigned_at) VALUES (?, ?, ?, ?)",
                    (row["id"], attempt, worker.worker_id, time.time()),
                )
                done.append(True)
            # A new reason is a change of the task: updated_at moves, so a client holding an older
            # copy (the answer to its submission) can tell which of the two is newer.
            now = time.time()
            db.executemany(
                "UPDATE tasks SET pending_reason = ?, updated_at = ? WHERE id = ? AND state = ?",
                [(reason, now, row["id"], pb.QUEUED) for row, reason in reasons],
            )
            return done

        try:
            done = await self.store.awrite(job)
        except BaseException:
            for row, worker, attempt in planned:
                worker.allocations.pop((row["id"], attempt), None)
            raise
        for row, _reason in reasons:
            self.notifier.changed(row["id"])  # a new pending reason: task feeds show it
        placed = 0
        now = time.time()
        for (row, worker, attempt), ok in zip(planned, done, strict=True):
            if not ok:
                worker.allocations.pop((row["id"], attempt), None)
                continue
            placed += 1
            self.metrics.observe_schedule_latency(now - float(row["queued_at"]))
            self.notifier.notify(row["id"])
            if worker.state == pb.WORKER_LOST:  # lost while the assignment was being stored
                current = self.store.get_task(row["id"])
                if current is not None:
                    with contextlib.suppress(Conflict):
                        await self.requeue(current, f"worker {worker.name} was lost", spend_retry=False)
                continue
            # Not connected: its Hello gets the assignment again, or liveness requeues it.
            worker.send(pb.PoolMessage(assignment=self.assignment_for(row, attempt)))
        return placed

    def assignment_for(self, row: sqlite3.Row, attempt: int | None = None) -> pb.Assignment:
        manifest = pb.Manifest.FromString(row["manifest"])
        return pb.Assignment(
            task_id=row["id"],
            attempt=int(row["attempt"]) if attempt is None else attempt,
            manifest=manifest,
            bundle_sha256=row["bundle_sha256"],
            bundle_size=row["bundle_size"],
            owner=row["owner"],
            allow_network=manifest.allow_network and self.settings.allow_network,
        )

    async def report_state(  # noqa: PLR0917
        self,
        worker_id: str,
        task_id: str,
        attempt: int,
        state: int,
        message: str,
        progress: pb.Progress | None,
    ) -> None:
        """A worker's forward move (PREPARING, RUNNING, UPLOADING) and/or a progress update."""
        fields: dict[str, Any] = {}
        if progress is not None and progress.cells_total:
            fields.update(cells_done=progress.cells_done, cells_total=progress.cells_total)

        def job(db: sqlite3.Connection) -> bool:
            row = fenced(_row(db, task_id), worker_id, attempt)
            moves = _ORDER.get(state, -1) > _ORDER[row["state"]]
            if moves:
                self._transition(db, row, state, message or state_name(state).lower(), **fields)
            elif fields:
                self.store.update_task(db, task_id, **fields)
            return moves

        if await self.store.awrite(job):
            self.notifier.notify(task_id)  # watchers only: a forward move frees no capacity
        elif fields:
            self.notifier.changed(task_id)  # progress only: no event, but task feeds show it

    async def record_events(
        self, worker_id: str, task_id: str, attempt: int, events: list[pb.TaskEvent]
    ) -> int:
        """Store a worker's output events in order, each once; returns the highest stored seq (the
        ack). A gap stops the batch: the worker resends from ack + 1."""

        def job(db: sqlite3.Connection) -> tuple[int, int]:
            fenced(_row(db, task_id), worker_id, attempt)
            found = db.execute(
                "SELECT events_acked FROM attempts WHERE task_id = ? AND attempt = ?", (task_id, attempt)
            ).fetchone()
            if found is None:
                raise Conflict(f"no attempt {attempt} of task {task_id}")
            acked = start = int(found[0])
            for event in sorted(events, key=lambda e: e.seq):
                if event.seq <= acked:
                    continue  # sent before: stored once already
                if event.seq != acked + 1:
                    break
                progress = event.progress
                self.store.append_event(
                    db,
                    task_id,
                    event.kind,
                    text=event.text,
                    data_json=event.data_json,
                    cells_done=progress.cells_done,
                    cells_total=progress.cells_total,
                    attempt=attempt,
                    worker_id=worker_id,
                    at=event.at or None,
                )
                if event.kind == pb.TaskEvent.PROGRESS and 0 <= progress.cells_done <= progress.cells_total:
                    self.store.update_task(
                        db, task_id, cells_done=progress.cells_done, cells_total=progress.cells_total
                    )
                acked = event.seq
            if acked != start:
                db.execute(
                    "UPDATE attempts SET events_acked = ? WHERE task_id = ? AND attempt = ?",
                    (acked, task_id, attempt),
                )
            return start, acked

        start, acked = await self.store.awrite(job)
        if acked != start:
            self.notifier.notify(task_id)
        return acked

    async def finish(
        self, worker_id: str, header: pb.ResultHeader, result: tuple[str, int] | None
    ) -> sqlite3.Row:
        """An attempt's outcome from its worker: a terminal state, or a hand-back when requeue is set.
        Returns the task's row after the change."""
        task_id, attempt = header.task_id, header.attempt

        def job(db: sqlite3.Connection) -> sqlite3.Row:
            row = _row(db, task_id)
            if is_partial_result(row, worker_id, header):
                return self._keep_partial(db, row, header, result)
            row = fenced(row, worker_id, attempt)
            db.execute(
                "UPDATE attempts SET ended_at = ?, outcome = ? WHERE task_id = ? AND attempt = ?",
                (time.time(), header.outcome, task_id, attempt),
            )
            if header.requeue:
                why = header.error.splitlines()[0][:300] if header.error else "its worker is draining"
                self._transition(
                    db,
                    row,
                    pb.QUEUED,
                    f"handed back by its worker ({why}); requeued without spending a retry",
                    worker_id="",
                )
            else:
                fields: dict[str, Any] = {
                    "error": header.error[:2000],
                    "traceback": header.traceback[:200_000],
                    "metrics": header.metrics.SerializeToString(),
                }
                if result is not None:
                    sha, size = result
                    db.execute(
                        "INSERT OR IGNORE INTO blobs (sha256, size, created_at) VALUES (?, ?, ?)",
                        (sha, size, time.time()),
                    )
                    fields.update(result_sha256=sha, result_size=size)
                message = (
                    header.error.splitlines()[0][:300] if header.error else state_name(header.outcome).lower()
                )
                self._transition(db, row, header.outcome, message, **fields)
            return _row(db, task_id)

        final = await self.store.awrite(job)
        worker = self.fleet.get(worker_id)
        if worker is not None:
            worker.allocations.pop((task_id, attempt), None)
        self._after(task_id)
        return final

    def _keep_partial(
        self,
        db: sqlite3.Connection,
        row: sqlite3.Row,
        header: pb.ResultHeader,
        result: tuple[str, int] | None,
    ) -> sqlite3.Row:
        """Store a cancelled attempt's result so far on its task; the state and timeline stay."""
        ended = db.execute(
            "SELECT outcome FROM attempts WHERE task_id = ? AND attempt = ?", (row["id"], header.attempt)
        ).fetchone()
        if result is None or ended is None or ended["outcome"] != pb.CANCELLED:
            raise Conflict(
                f"task {row['id']} has ended (CANCELLED); only attempt {header.attempt}'s result so far "
                "can still be stored"
            )
        sha, size = result
        db.execute(
            "INSERT OR IGNORE INTO blobs (sha256, size, created_at) VALUES (?, ?, ?)",
            (sha, size, time.time()),
        )
        fields: dict[str, Any] = {"result_sha256": sha, "result_size": size}
        if header.HasField("metrics"):
            fields["metrics"] = header.metrics.SerializeToString()
        self.store.update_task(db, row["id"], **fields)
        return _row(db, row["id"])

    async def requeue(self, row: sqlite3.Row, message: str, spend_retry: bool) -> int | None:
        """Take an active task off its worker: back to QUEUED, or LOST when its retries are spent.
        Returns the new state, or None when that attempt had already ended meanwhile."""
        attempt = int(row["attempt"])

        def job(db: sqlite3.Connection) -> int | None:
            current = _row(db, row["id"])
            if current["state"] not in ON_WORKER_STATES or int(current["attempt"]) != attempt:
                return None
            used = int(current["retries_used"]) + (1 if spend_retry else 0)
            db.execute(
                "UPDATE attempts SET ended_at = ?, outcome = ? WHERE task_id = ? AND attempt = ?",
                (time.time(), pb.LOST, row["id"], attempt),
            )
            if spend_retry and used > int(current["max_retries"]):
                self._transition(
                    db,
                    current,
                    pb.LOST,
                    f"{message}; no retries left ({current['max_retries']} used)",
                    error=f"{message}; retries exhausted",
                )
                return pb.LOST
            note = f" (retry {used} of {current['max_retries']})" if spend_retry else ""
            self._transition(
                db, current, pb.QUEUED, f"{message}; requeued{note}", retries_used=used, worker_id=""
            )
            return pb.QUEUED

        state = await self.store.awrite(job)
        if state is not None:
            self._release(row, attempt)
            self._after(row["id"])
        return state

    async def cancel(self, row: sqlite3.Row, reason: str, state: int = pb.CANCELLED) -> sqlite3.Row:
        """End a task that has not ended (user cancel, or the pool's timeout backstop); returns the
        row before the change (its worker and attempt)."""

        def job(db: sqlite3.Connection) -> sqlite3.Row:
            current = _row(db, row["id"])
            if current["state"] in TERMINAL_STATES:
                raise Conflict(f"task {current['id']} has already ended ({state_name(current['state'])})")
            if current["state"] in ON_WORKER_STATES:
                db.execute(
                    "UPDATE attempts SET ended_at = ?, outcome = ? WHERE task_id = ? AND attempt = ?",
                    (time.time(), state, current["id"], int(current["attempt"])),
                )
            self._transition(db, current, state, reason, error=reason if state != pb.CANCELLED else "")
            return current

        before = await self.store.awrite(job)
        if before["state"] in ON_WORKER_STATES:
            attempt = int(before["attempt"])
            worker = self.fleet.get(before["worker_id"])
            if worker is not None:
                worker.send(
                    pb.PoolMessage(
                        cancel=pb.CancelOrder(task_id=before["id"], attempt=attempt, reason=reason)
                    )
                )
            self._release(before, attempt)
        self._after(before["id"])
        return before

    def _release(self, row: sqlite3.Row, attempt: int) -> None:
        """Free an attempt's allocation, unless its worker still runs it: then wait until the worker's
        heartbeat no longer lists it, so capacity is never overcommitted."""
        worker = self.fleet.get(row["worker_id"])
        if worker is None:
            return
        key = (row["id"], attempt)
        if worker.connected and key in worker.reported:
            worker.zombies.add(key)
            return
        worker.allocations.pop(key, None)
