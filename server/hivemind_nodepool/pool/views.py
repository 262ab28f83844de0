"""Database rows as the wire's messages."""

from __future__ import annotations

import sqlite3

from hivemind_nodepool.pool.fleet import WorkerEntry
from hivemind_nodepool.proto import nodepool_pb2 as pb


def user(row: sqlite3.Row) -> pb.User:
    return pb.User(
        name=row["name"],
        admin=bool(row["admin"]),
        disabled=bool(row["disabled"]),
        created_at=row["created_at"],
    )


def join_token(row: sqlite3.Row, secret: str = "") -> pb.JoinToken:
    return pb.JoinToken(
        id=row["id"],
        token=secret,
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked=bool(row["revoked"]),
        created_by=row["created_by"],
    )


def event(row: sqlite3.Row) -> pb.TaskEvent:
    message = pb.TaskEvent(
        seq=row["seq"],
        at=row["at"],
        kind=row["kind"],
        state=row["state"],
        text=row["text"],
        data_json=row["data_json"],
        attempt=row["attempt"],
    )
    if row["cells_total"]:
        message.progress.CopyFrom(pb.Progress(cells_done=row["cells_done"], cells_total=row["cells_total"]))
    return message


def task(row: sqlite3.Row, timeline: list[sqlite3.Row] | None = None, worker_name: str = "") -> pb.Task:
    message = pb.Task(
        id=row["id"],
        owner=row["owner"],
        manifest=pb.Manifest.FromString(row["manifest"]),
        state=row["state"],
        bundle_sha256=row["bundle_sha256"],
        bundle_size=row["bundle_size"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        attempt=row["attempt"],
        retries_used=row["retries_used"],
        worker_id=row["worker_id"],
        worker_name=worker_name,
        pending_reason=row["pending_reason"],
        error=row["error"],
        traceback=row["traceback"],
        result_sha256="" if row["blobs_expired"] else row["result_sha256"],
        result_size=row["result_size"],
        progress=pb.Progress(cells_done=row["cells_done"], cells_total=row["cells_total"]),
        retry_of=row["retry_of"],
        last_event_seq=row["last_event_seq"],
    )
    if row["metrics"]:
        message.metrics.ParseFromString(row["metrics"])
    for item in timeline or ():
        message.timeline.append(
            pb.StateTransition(
                state=item["state"],
                at=item["at"],
                message=item["text"],
                attempt=item["attempt"],
                worker_id=item["worker_id"],
            )
        )
    return message


def worker(entry: WorkerEntry, registered_at: float) -> pb.Worker:
    return pb.Worker(
        id=entry.worker_id,
        name=entry.name,
        state=entry.state,  # type: ignore[arg-type]
        facts=entry.facts,
        capacity=entry.capacity.to_pb(),
        allocated=entry.allocated.to_pb(),
        running_task_ids=sorted({task_id for task_id, _ in entry.allocations}),
        last_heartbeat_at=entry.last_heartbeat_at,
        registered_at=registered_at,
    )
