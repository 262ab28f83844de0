"""The store's single writer: jobs waiting together share one transaction (one fsync), each job's
failure stays its own, and a write is visible to a fresh reader as soon as it returns. Then the same
promise end to end: concurrent submissions, SIGKILL, every acknowledged task is there."""

from __future__ import annotations

import hashlib
import io
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from harness import PoolProcess

from hivemind_nodepool.pool.store import Store
from hivemind_nodepool.protocol.errors import HiveMindError

from .helpers import bundle_bytes, manifest


def _add_user(name: str) -> Callable[[sqlite3.Connection], None]:
    def job(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO users (name, password_hash, created_at) VALUES (?, 'x', 0)", (name,))

    return job


def test_waiting_jobs_share_one_transaction_and_fail_alone(tmp_path: Path) -> None:
    store = Store(tmp_path)
    try:
        gate = threading.Event()
        held = store.submit(lambda db: gate.wait(10))  # keeps the writer busy while the rest queue up
        futures: list[Future[None]] = [store.submit(_add_user(f"user{i}")) for i in range(50)]

        def broken(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO users (name, password_hash, created_at) VALUES ('half', 'x', 0)")
            raise ValueError("this job fails after writing")

        failing = store.submit(broken)
        commits_before, _ = store.commit_stats
        gate.set()
        held.result(10)
        for future in futures:
            future.result(10)
        with pytest.raises(ValueError, match="fails after writing"):
            failing.result(10)
        commits, jobs = store.commit_stats
        # 52 jobs: the held one (alone, or with some of the rest) and then the others together.
        assert commits - commits_before <= 2 and jobs >= 52
        reader = sqlite3.connect(tmp_path / "pool.db")
        names = {row[0] for row in reader.execute("SELECT name FROM users")}
        reader.close()
        assert names == {f"user{i}" for i in range(50)}  # the failing job's row was rolled back alone
    finally:
        store.close()


def test_a_write_is_committed_when_it_returns(tmp_path: Path) -> None:
    store = Store(tmp_path)
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: store.write(_add_user(f"u{i}")), range(200)))
        # A new connection (as after a crash) sees every one of them.
        reader = sqlite3.connect(tmp_path / "pool.db")
        assert reader.execute("SELECT count(*) FROM users").fetchone()[0] == 200
        reader.close()
        # A job can write through the blocking call from inside another job: it joins that transaction.
        store.write(lambda db: store.write(_add_user("nested")))
        assert store.get_user("nested") is not None
        # Hostile input through a job is just data.
        store.write(_add_user("x'); DROP TABLE users; --"))
        assert store.get_user("x'); DROP TABLE users; --") is not None
    finally:
        store.close()


def test_concurrent_submissions_are_durable_when_acknowledged(pool: PoolProcess) -> None:
    pool.add_user("alice", "alice-password")
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    failures: list[str] = []

    def burst(thread: int) -> None:
        client = pool.login("alice", "alice-password")
        n = 0
        while not stop.is_set():
            n += 1
            # Half the threads send the same bundle over and over, half a new one each time.
            extra = (
                {"data.bin": b"same" * 1000} if thread % 2 else {"data.bin": f"{thread}-{n}".encode() * 500}
            )
            try:
                task = client.submit(manifest(), io.BytesIO(bundle_bytes(extra=extra)))
            except HiveMindError as exc:
                failures.append(type(exc).__name__)
                return
            with lock:
                acknowledged.append(task.id)

    threads = [threading.Thread(target=burst, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    pool.kill()
    with lock:
        acked = list(acknowledged)  # only what was answered before the kill
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert len(acked) >= 100
    pool.start()
    alice = pool.login("alice", "alice-password")
    stored = {t.id for t in alice.iter_tasks()}
    print(f"{len(acked)} acknowledged by 8 concurrent clients before SIGKILL, {len(stored)} stored")
    assert set(acked) <= stored
    db = sqlite3.connect(pool.data_dir / "pool.db")
    for (sha,) in db.execute("SELECT DISTINCT bundle_sha256 FROM tasks"):
        data = (pool.data_dir / "blobs" / sha[:2] / sha[2:]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha
    db.close()
