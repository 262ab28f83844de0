"""The task state machine: every transition is one transaction that updates the task, stores a STATE
event (the timeline), wakes watchers and the scheduler, and keeps worker allocations right."""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
import time
from typing import Any

from .config import PoolSettings
from .errors import Conflict, NotFound
from .events import TaskNotifier
from .fleet import Amount, Fleet, WorkerEntry
from .metrics import PoolMetrics
from .proto import nodepool_pb2 as pb
from .store import ACTIVE_STATES, TERMINAL_STATES, Store

log = logging.getLogger(__name__)

# Forward moves a worker may report while it runs an attempt.
_ORDER: dict[int, int] = {pb.ASSIGNED: 0, pb.PREPARING: 1, pb.RUNNING: 2, pb.UPLOADING: 3}


def state_name(state: int) -> str:
    return pb.TaskState.Name(state)  # type: ignore[arg-type]


def new_task_id() -> str:
    return "t-" + secrets.token_hex(6)


def amount_of(row: sqlite3.Row) -> Amount:
    return Amount(float(row["cpus"]), int(row["memory_bytes"]), int(row["gpus"]))


class TaskBook:
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
        row = self.require_task(task_id)
        if row["worker_id"] != worker_id or int(row["attempt"]) != attempt:
            raise Conflict(
                f"attempt {attempt} of task {task_id} is stale: the task's current attempt is "
                f"{row['attempt']}; stop it"
            )
        if row["state"] not in ACTIVE_STATES:
            raise Conflict(f"task {task_id} has ended ({state_name(row['state'])}); stop attempt {attempt}")
        return row

    # -- transitions ----------------------------------------------------------------------------

    def submit(self, owner: str, manifest: pb.Manifest, sha256: str, size: int, retry_of: str = "") -> str:
        task_id = new_task_id()
        now = time.time()
        res = manifest.resources
        with self.store.tx() as db:
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
        self._after(task_id)
        return task_id

    def assign(self, row: sqlite3.Row, worker: WorkerEntry) -> None:
        attempt = int(row["attempt"]) + 1
        now = time.time()
        with self.store.tx() as db:
            self._transition(
                db,
                row,
                pb.ASSIGNED,
                f"assigned to worker {worker.name}",
                attempt=attempt,
                worker_id=worker.worker_id,
                pending_reason="",
            )
            db.execute(
                "INSERT INTO attempts (task_id, attempt, worker_id, assigned_at) VALUES (?, ?, ?, ?)",
                (row["id"], attempt, worker.worker_id, now),
            )
        worker.allocations[(row["id"], attempt)] = amount_of(row)
        self.metrics.observe_schedule_latency(now - float(row["queued_at"]))
        manifest = pb.Manifest.FromString(row["manifest"])
        worker.send(
            pb.PoolMessage(
                assignment=pb.Assignment(
                    task_id=row["id"],
                    attempt=attempt,
                    manifest=manifest,
                    bundle_sha256=row["bundle_sha256"],
                    bundle_size=row["bundle_size"],
                    owner=row["owner"],
                    allow_network=manifest.allow_network and self.settings.allow_network,
                )
            )
        )
        self.notifier.notify(row["id"])

    def assignment_for(self, row: sqlite3.Row) -> pb.Assignment:
        manifest = pb.Manifest.FromString(row["manifest"])
        return pb.Assignment(
            task_id=row["id"],
            attempt=int(row["attempt"]),
            manifest=manifest,
            bundle_sha256=row["bundle_sha256"],
            bundle_size=row["bundle_size"],
            owner=row["owner"],
            allow_network=manifest.allow_network and self.settings.allow_network,
        )

    def report_state(self, row: sqlite3.Row, state: int, message: str, progress: pb.Progress | None) -> None:
        """A worker's forward move (PREPARING, RUNNING, UPLOADING) and/or a progress update."""
        fields: dict[str, Any] = {}
        if progress is not None and progress.cells_total:
            fields.update(cells_done=progress.cells_done, cells_total=progress.cells_total)
        moves = _ORDER.get(state, -1) > _ORDER[row["state"]]
        with self.store.tx() as db:
            if moves:
                self._transition(db, row, state, message or state_name(state).lower(), **fields)
            elif fields:
                self.store.update_task(db, row["id"], **fields)
        if moves:
            self._after(row["id"])

    def finish(self, row: sqlite3.Row, header: pb.ResultHeader, result: tuple[str, int] | None) -> None:
        """An attempt's outcome from its worker: a terminal state, or a hand-back when requeue is set."""
        attempt = int(row["attempt"])
        worker = self.fleet.get(row["worker_id"])
        with self.store.tx() as db:
            db.execute(
                "UPDATE attempts SET ended_at = ?, outcome = ? WHERE task_id = ? AND attempt = ?",
                (time.time(), header.outcome, row["id"], attempt),
            )
            if header.requeue:
                self._transition(
                    db,
                    row,
                    pb.QUEUED,
                    "handed back by a draining worker; requeued without spending a retry",
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
        if worker is not None:
            worker.allocations.pop((row["id"], attempt), None)
        self._after(row["id"])

    def requeue(self, row: sqlite3.Row, message: str, spend_retry: bool) -> int:
        """Take an active task off its worker: back to QUEUED, or LOST when its retries are spent."""
        attempt = int(row["attempt"])
        used = int(row["retries_used"]) + (1 if spend_retry else 0)
        with self.store.tx() as db:
            db.execute(
                "UPDATE attempts SET ended_at = ?, outcome = ? WHERE task_id = ? AND attempt = ?",
                (time.time(), pb.LOST, row["id"], attempt),
            )
            if spend_retry and used > int(row["max_retries"]):
                state = pb.LOST
                self._transition(
                    db,
                    row,
                    pb.LOST,
                    f"{message}; no retries left ({row['max_retries']} used)",
                    error=f"{message}; retries exhausted",
                )
            else:
                state = pb.QUEUED
                note = f" (retry {used} of {row['max_retries']})" if spend_retry else ""
                self._transition(
                    db, row, pb.QUEUED, f"{message}; requeued{note}", retries_used=used, worker_id=""
                )
        self._release(row, attempt)
        self._after(row["id"])
        return state

    def cancel(self, row: sqlite3.Row, reason: str, state: int = pb.CANCELLED) -> None:
        """End a task that has not ended (user cancel, or the pool's timeout backstop)."""
        if row["state"] in TERMINAL_STATES:
            raise Conflict(f"task {row['id']} has already ended ({state_name(row['state'])})")
        attempt = int(row["attempt"])
        with self.store.tx() as db:
            if row["state"] in ACTIVE_STATES:
                db.execute(
                    "UPDATE attempts SET ended_at = ?, outcome = ? WHERE task_id = ? AND attempt = ?",
                    (time.time(), state, row["id"], attempt),
                )
            self._transition(db, row, state, reason, error=reason if state != pb.CANCELLED else "")
        if row["state"] in ACTIVE_STATES:
            worker = self.fleet.get(row["worker_id"])
            if worker is not None:
                worker.send(
                    pb.PoolMessage(cancel=pb.CancelOrder(task_id=row["id"], attempt=attempt, reason=reason))
                )
            self._release(row, attempt)
        self._after(row["id"])

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

    def set_pending_reason(self, row: sqlite3.Row, reason: str) -> None:
        if row["pending_reason"] == reason:
            return
        with self.store.tx() as db:
            db.execute(
                "UPDATE tasks SET pending_reason = ? WHERE id = ? AND state = ?",
                (reason, row["id"], pb.QUEUED),
            )
