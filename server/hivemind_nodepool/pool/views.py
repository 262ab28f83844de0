"""Database rows as the wire's messages."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from typing import Any

from hivemind_nodepool.pool.fleet import WorkerEntry
from hivemind_nodepool.proto import nodepool_pb2 as pb

# Columns copied as they are into the message field of the same name.
_USER = ("name", "created_at")
_JOIN_TOKEN = ("id", "created_at", "expires_at", "created_by")
_EVENT = ("seq", "at", "kind", "state", "text", "data_json", "attempt")
_TRANSITION = ("state", "at", "attempt", "worker_id")
_TASK = (
    "id",
    "owner",
    "state",
    "bundle_sha256",
    "bundle_size",
    "created_at",
    "updated_at",
    "attempt",
    "retries_used",
    "worker_id",
    "pending_reason",
    "error",
    "traceback",
    "result_size",
    "retry_of",
    "last_event_seq",
)


def _columns(row: sqlite3.Row, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: row[name] for name in names}


def user(row: sqlite3.Row) -> pb.User:
    return pb.User(**_columns(row, _USER), admin=bool(row["admin"]), disabled=bool(row["disabled"]))


def join_token(row: sqlite3.Row, secret: str = "") -> pb.JoinToken:
    return pb.JoinToken(**_columns(row, _JOIN_TOKEN), token=secret, revoked=bool(row["revoked"]))


def event(row: sqlite3.Row) -> pb.TaskEvent:
    message = pb.TaskEvent(**_columns(row, _EVENT))
    if row["cells_total"]:
        message.progress.CopyFrom(pb.Progress(cells_done=row["cells_done"], cells_total=row["cells_total"]))
    return message


def task(row: sqlite3.Row, timeline: list[sqlite3.Row] | None = None, worker_name: str = "") -> pb.Task:
    message = pb.Task(
        **_columns(row, _TASK),
        manifest=pb.Manifest.FromString(row["manifest"]),
        worker_name=worker_name,
        result_sha256="" if row["blobs_expired"] else row["result_sha256"],
        progress=pb.Progress(cells_done=row["cells_done"], cells_total=row["cells_total"]),
    )
    if row["metrics"]:
        message.metrics.ParseFromString(row["metrics"])
    for item in timeline or ():
        message.timeline.append(pb.StateTransition(**_columns(item, _TRANSITION), message=item["text"]))
    return message


def _capacity(entry: WorkerEntry) -> pb.Resources:
    capacity = entry.capacity.to_pb()
    capacity.disk_bytes = entry.task_disk  # per task, unlike the rest
    return capacity


def worker(
    entry: WorkerEntry, row: sqlite3.Row, visible: Collection[str] | None = None, admin: bool = True
) -> pb.Worker:
    """The worker as `admin` (or a plain user) may see it: running_task_ids only those in visible
    (None: all), running_count every task, the join token it registered with for admins only."""
    running = sorted({task_id for task_id, _ in entry.allocations})
    return pb.Worker(
        id=entry.worker_id,
        name=entry.name,
        state=pb.WORKER_REVOKED if row["revoked_at"] else entry.state,  # type: ignore[arg-type]
        facts=entry.facts,
        capacity=_capacity(entry),
        allocated=entry.allocated.to_pb(),
        running_task_ids=[t for t in running if visible is None or t in visible],
        running_count=len(running),
        last_heartbeat_at=entry.last_heartbeat_at,
        registered_at=row["registered_at"],
        join_token_id=row["join_token_id"] if admin else "",
        revoked_at=row["revoked_at"],
        env_cache=entry.env_cache,
    )
