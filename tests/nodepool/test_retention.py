"""Retention and collection of blobs, and schema migrations, on the store directly."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import time
from pathlib import Path

from hivemind_nodepool.pool.blobs import BlobStore
from hivemind_nodepool.pool.retention import ORPHAN_AGE, Collector
from hivemind_nodepool.pool.store import MIGRATIONS, Store


def put_blob(blobs: BlobStore, data: bytes) -> str:
    async def put() -> str:
        writer = blobs.writer(1 << 20)
        await writer.write(data)
        await writer.verify(hashlib.sha256(data).hexdigest())
        return await writer.finish()

    return asyncio.run(put())


def add_task(store: Store, task_id: str, bundle: str, result: str, finished_at: float | None) -> None:
    store.write(lambda db: _insert(store, db, task_id, bundle, result, finished_at))


def _insert(
    store: Store, db: sqlite3.Connection, task_id: str, bundle: str, result: str, finished_at: float | None
) -> None:
    for sha in {bundle, result} - {""}:
        db.execute("INSERT OR IGNORE INTO blobs VALUES (?, 1, ?)", (sha, time.time()))
    store.insert_task(
        db,
        {
            "id": task_id,
            "owner": "alice",
            "manifest": b"",
            "state": 6 if finished_at else 1,
            "cpus": 1,
            "memory_bytes": 1,
            "gpus": 0,
            "bundle_sha256": bundle,
            "bundle_size": 1,
            "created_at": 0,
            "updated_at": 0,
            "queued_at": 0,
            "max_retries": 2,
            "timeout_seconds": 60,
            "result_sha256": result,
            "finished_at": finished_at,
        },
    )


def test_retention_collects_only_unreferenced_blobs(tmp_path: Path) -> None:
    store = Store(tmp_path)
    blobs = BlobStore(tmp_path / "blobs")
    shared = put_blob(blobs, b"shared bundle")
    old_result = put_blob(blobs, b"old result")
    new_result = put_blob(blobs, b"new result")
    add_task(store, "t-old", shared, old_result, finished_at=time.time() - 3600)
    add_task(store, "t-new", shared, new_result, finished_at=time.time())
    add_task(store, "t-queued", put_blob(blobs, b"queued bundle"), "", finished_at=None)
    orphan = put_blob(blobs, b"left by a crash")  # a file with no row
    stale = time.time() - ORPHAN_AGE - 10
    os.utime(blobs.path_for(orphan), (stale, stale))
    in_flight = put_blob(blobs, b"being committed")
    collector = Collector(store, blobs, retention=60, interval=3600)
    collector.in_flight.add(in_flight)
    assert collector.collect() == 2  # the old result and the orphan file
    assert not blobs.exists(old_result) and not blobs.exists(orphan)
    assert blobs.exists(shared) and blobs.exists(new_result) and blobs.exists(in_flight)
    assert store.get_task("t-old")["blobs_expired"] == 1  # type: ignore[index]
    assert collector.collect() == 0
    store.close()


def test_schema_is_versioned_and_reopening_is_idempotent(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.schema_version() == len(MIGRATIONS)
    store.close()
    again = Store(tmp_path)
    assert again.schema_version() == len(MIGRATIONS)
    assert again.one("PRAGMA journal_mode")[0] == "wal"  # type: ignore[index]
    assert again.one("PRAGMA synchronous")[0] == 2  # type: ignore[index]  # FULL
    again.close()
