"""The pool's durable state in SQLite: users, tokens, join tokens, workers, tasks, attempts, events, blobs.

WAL mode with synchronous=FULL: a committed transaction survives kill -9 and power loss. Every
write runs in one `BEGIN IMMEDIATE` transaction. A second process (`hivemind-nodepool user add
--data-dir`) may write while the server runs; busy_timeout makes each side wait its turn.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import InternalError
from .proto import nodepool_pb2 as pb

log = logging.getLogger(__name__)

DB_NAME = "pool.db"
ACTIVE_STATES = (pb.ASSIGNED, pb.PREPARING, pb.RUNNING, pb.UPLOADING)
TERMINAL_STATES = (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED, pb.TIMED_OUT, pb.LOST)

# Each migration moves the schema from version i to i+1; applied in order at start, never edited.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        admin INTEGER NOT NULL DEFAULT 0,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    CREATE TABLE tokens (
        hash TEXT PRIMARY KEY,
        user TEXT NOT NULL REFERENCES users(name),
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE join_tokens (
        id TEXT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0,
        created_by TEXT NOT NULL
    );
    CREATE TABLE workers (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        credential_hash TEXT NOT NULL UNIQUE,
        join_token_id TEXT NOT NULL,
        facts BLOB NOT NULL,
        state INTEGER NOT NULL,
        registered_at REAL NOT NULL,
        last_heartbeat_at REAL NOT NULL DEFAULT 0
    );
    CREATE TABLE blobs (
        sha256 TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        manifest BLOB NOT NULL,
        state INTEGER NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        cpus REAL NOT NULL,
        memory_bytes INTEGER NOT NULL,
        gpus INTEGER NOT NULL,
        bundle_sha256 TEXT NOT NULL REFERENCES blobs(sha256),
        bundle_size INTEGER NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        queued_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        attempt INTEGER NOT NULL DEFAULT 0,
        retries_used INTEGER NOT NULL DEFAULT 0,
        max_retries INTEGER NOT NULL,
        timeout_seconds INTEGER NOT NULL,
        worker_id TEXT NOT NULL DEFAULT '',
        pending_reason TEXT NOT NULL DEFAULT '',
        error TEXT NOT NULL DEFAULT '',
        traceback TEXT NOT NULL DEFAULT '',
        result_sha256 TEXT NOT NULL DEFAULT '',
        result_size INTEGER NOT NULL DEFAULT 0,
        cells_done INTEGER NOT NULL DEFAULT 0,
        cells_total INTEGER NOT NULL DEFAULT 0,
        metrics BLOB,
        retry_of TEXT NOT NULL DEFAULT '',
        last_event_seq INTEGER NOT NULL DEFAULT 0,
        blobs_expired INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX tasks_by_state ON tasks(state, queued_at);
    CREATE INDEX tasks_by_owner ON tasks(owner, created_at);
    CREATE INDEX tasks_by_created ON tasks(created_at);
    CREATE TABLE attempts (
        task_id TEXT NOT NULL REFERENCES tasks(id),
        attempt INTEGER NOT NULL,
        worker_id TEXT NOT NULL,
        assigned_at REAL NOT NULL,
        ended_at REAL,
        outcome INTEGER NOT NULL DEFAULT 0,
        events_acked INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (task_id, attempt)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        task_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        at REAL NOT NULL,
        kind INTEGER NOT NULL,
        state INTEGER NOT NULL DEFAULT 0,
        text TEXT NOT NULL DEFAULT '',
        data_json TEXT NOT NULL DEFAULT '',
        cells_done INTEGER NOT NULL DEFAULT 0,
        cells_total INTEGER NOT NULL DEFAULT 0,
        attempt INTEGER NOT NULL DEFAULT 0,
        worker_id TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (task_id, seq)
    ) WITHOUT ROWID;
    CREATE INDEX events_by_kind ON events(task_id, kind, seq);
    """,
]


class Store:
    """One connection to the pool database. Not shared between threads."""

    def __init__(self, data_dir: Path, busy_timeout_ms: int = 15_000) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / DB_NAME
        self._lock = threading.RLock()
        self.conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000
        )
        self.conn.row_factory = sqlite3.Row
        self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise InternalError(f"cannot put {self.path} in WAL mode (got {mode})")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.execute("PRAGMA foreign_keys = ON")
        self.migrate()

    def close(self) -> None:
        self.conn.close()

    # -- plumbing -------------------------------------------------------------------------------

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; nested use joins the outer one."""
        with self._lock:
            if self.conn.in_transaction:
                yield self.conn
                return
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def one(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self.conn.execute(sql, args).fetchone()
            return row

    def all(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self.conn.execute(sql, args).fetchall())

    def schema_version(self) -> int:
        row = self.one("SELECT name FROM sqlite_master WHERE type='table' AND name='schema_version'")
        if row is None:
            return 0
        found = self.one("SELECT version FROM schema_version")
        return int(found["version"]) if found else 0

    def migrate(self) -> None:
        with self.tx() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            current = int(row["version"]) if row else 0
            if row is None:
                db.execute("INSERT INTO schema_version VALUES (0)")
            if current > len(MIGRATIONS):
                raise InternalError(
                    f"{self.path} has schema version {current}, newer than this "
                    f"HiveMind ({len(MIGRATIONS)}); upgrade HiveMind"
                )
            for version in range(current, len(MIGRATIONS)):
                log.info("migrating %s to schema version %d", self.path, version + 1)
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("UPDATE schema_version SET version = ?", (version + 1,))

    # -- users and tokens -----------------------------------------------------------------------

    def add_user(self, name: str, password_hash: str, admin: bool) -> sqlite3.Row:
        with self.tx() as db:
            db.execute(
                "INSERT INTO users (name, password_hash, admin, created_at) VALUES (?, ?, ?, ?)",
                (name, password_hash, int(admin), time.time()),
            )
        row = self.get_user(name)
        assert row is not None
        return row

    def get_user(self, name: str) -> sqlite3.Row | None:
        return self.one("SELECT * FROM users WHERE name = ?", (name,))

    def list_users(self) -> list[sqlite3.Row]:
        return self.all("SELECT * FROM users ORDER BY name")

    def set_user_disabled(self, name: str, disabled: bool) -> None:
        with self.tx() as db:
            db.execute("UPDATE users SET disabled = ? WHERE name = ?", (int(disabled), name))
            if disabled:  # a disabled user's tokens stop working at once
                db.execute("UPDATE tokens SET revoked = 1 WHERE user = ?", (name,))

    def add_token(self, token_hash: str, user: str, expires_at: float) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT INTO tokens (hash, user, created_at, expires_at) VALUES (?, ?, ?, ?)",
                (token_hash, user, time.time(), expires_at),
            )

    def get_token(self, token_hash: str) -> sqlite3.Row | None:
        return self.one(
            "SELECT t.*, u.admin, u.disabled FROM tokens t JOIN users u ON u.name = t.user WHERE t.hash = ?",
            (token_hash,),
        )

    def revoke_token(self, token_hash: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE tokens SET revoked = 1 WHERE hash = ?", (token_hash,))

    # -- join tokens ----------------------------------------------------------------------------

    def add_join_token(self, token_id: str, token_hash: str, expires_at: float, created_by: str) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT INTO join_tokens (id, hash, created_at, expires_at, created_by) "
                "VALUES (?, ?, ?, ?, ?)",
                (token_id, token_hash, time.time(), expires_at, created_by),
            )

    def get_join_token(self, token_id: str) -> sqlite3.Row | None:
        return self.one("SELECT * FROM join_tokens WHERE id = ?", (token_id,))

    def get_join_token_by_hash(self, token_hash: str) -> sqlite3.Row | None:
        return self.one("SELECT * FROM join_tokens WHERE hash = ?", (token_hash,))

    def list_join_tokens(self) -> list[sqlite3.Row]:
        return self.all("SELECT * FROM join_tokens ORDER BY created_at")

    def revoke_join_token(self, token_id: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE join_tokens SET revoked = 1 WHERE id = ?", (token_id,))

    # -- workers --------------------------------------------------------------------------------

    def add_worker(  # noqa: PLR0917
        self, worker_id: str, name: str, credential_hash: str, join_token_id: str, facts: bytes, state: int
    ) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT INTO workers (id, name, credential_hash, join_token_id, facts, state, "
                "registered_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (worker_id, name, credential_hash, join_token_id, facts, state, time.time()),
            )

    def get_worker(self, worker_id: str) -> sqlite3.Row | None:
        return self.one("SELECT * FROM workers WHERE id = ?", (worker_id,))

    def get_worker_by_credential(self, credential_hash: str) -> sqlite3.Row | None:
        return self.one("SELECT * FROM workers WHERE credential_hash = ?", (credential_hash,))

    def list_workers(self) -> list[sqlite3.Row]:
        return self.all("SELECT * FROM workers ORDER BY registered_at")

    def update_worker(self, worker_id: str, **fields: Any) -> None:
        if not fields:
            return
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self.tx() as db:
            db.execute(
                f"UPDATE workers SET {assignments} WHERE id = ?",  # noqa: S608 (names are ours)
                (*fields.values(), worker_id),
            )

    # -- blobs ----------------------------------------------------------------------------------

    def add_blob(self, sha256: str, size: int) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO blobs (sha256, size, created_at) VALUES (?, ?, ?)",
                (sha256, size, time.time()),
            )

    def blob_hashes(self) -> set[str]:
        return {row["sha256"] for row in self.all("SELECT sha256 FROM blobs")}

    def referenced_blobs(self) -> set[str]:
        """Blobs that tasks still need: every live bundle and result."""
        rows = self.all("SELECT bundle_sha256, result_sha256 FROM tasks WHERE blobs_expired = 0")
        return {h for row in rows for h in (row["bundle_sha256"], row["result_sha256"]) if h}

    def delete_blob_rows(self, hashes: Iterable[str]) -> None:
        with self.tx() as db:
            db.executemany("DELETE FROM blobs WHERE sha256 = ?", [(h,) for h in hashes])

    def expire_finished_tasks(self, before: float) -> int:
        """Mark tasks that ended before `before` as past retention; their blobs become collectable."""
        terminal = ",".join(str(int(s)) for s in TERMINAL_STATES)
        with self.tx() as db:
            cursor = db.execute(
                f"UPDATE tasks SET blobs_expired = 1 WHERE blobs_expired = 0 "  # noqa: S608
                f"AND state IN ({terminal}) AND finished_at < ?",
                (before,),
            )
            return cursor.rowcount

    # -- tasks ----------------------------------------------------------------------------------

    def get_task(self, task_id: str) -> sqlite3.Row | None:
        return self.one("SELECT * FROM tasks WHERE id = ?", (task_id,))

    def timeline(self, task_id: str) -> list[sqlite3.Row]:
        return self.all(
            "SELECT * FROM events WHERE task_id = ? AND kind = ? ORDER BY seq", (task_id, pb.TaskEvent.STATE)
        )

    def list_tasks(
        self, owner: str | None, states: Sequence[int], limit: int, offset: int
    ) -> tuple[list[sqlite3.Row], int]:
        where: list[str] = []
        args: list[Any] = []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args.extend(int(s) for s in states)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        total = self.one(f"SELECT count(*) AS n FROM tasks {clause}", args)  # noqa: S608
        rows = self.all(
            f"SELECT * FROM tasks {clause} ORDER BY created_at DESC, id DESC "  # noqa: S608
            "LIMIT ? OFFSET ?",
            [*args, limit, offset],
        )
        return rows, int(total["n"]) if total else 0

    def tasks_in_states(self, states: Sequence[int]) -> list[sqlite3.Row]:
        marks = ",".join("?" * len(states))
        return self.all(
            f"SELECT * FROM tasks WHERE state IN ({marks}) ORDER BY queued_at, id",  # noqa: S608
            [int(s) for s in states],
        )

    def count_by_state(self) -> dict[int, int]:
        return {
            int(r["state"]): int(r["n"])
            for r in self.all("SELECT state, count(*) AS n FROM tasks GROUP BY state")
        }

    def insert_task(self, db: sqlite3.Connection, row: dict[str, Any]) -> None:
        names = ", ".join(row)
        marks = ", ".join("?" * len(row))
        db.execute(f"INSERT INTO tasks ({names}) VALUES ({marks})", list(row.values()))  # noqa: S608

    def update_task(self, db: sqlite3.Connection, task_id: str, **fields: Any) -> None:
        fields["updated_at"] = time.time()
        assignments = ", ".join(f"{name} = ?" for name in fields)
        db.execute(
            f"UPDATE tasks SET {assignments} WHERE id = ?",  # noqa: S608 (names are ours)
            (*fields.values(), task_id),
        )

    def append_event(
        self,
        db: sqlite3.Connection,
        task_id: str,
        kind: int,
        *,
        state: int = 0,
        text: str = "",
        data_json: str = "",
        cells_done: int = 0,
        cells_total: int = 0,
        attempt: int = 0,
        worker_id: str = "",
        at: float | None = None,
    ) -> int:
        """Store one event under the task's next sequence number (inside the caller's transaction)."""
        row = db.execute(
            "UPDATE tasks SET last_event_seq = last_event_seq + 1 WHERE id = ? RETURNING last_event_seq",
            (task_id,),
        ).fetchone()
        if row is None:
            raise InternalError(f"no task {task_id} to add an event to")
        seq = int(row[0])
        db.execute(
            "INSERT INTO events (task_id, seq, at, kind, state, text, data_json, cells_done, "
            "cells_total, attempt, worker_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                task_id,
                seq,
                time.time() if at is None else at,
                kind,
                state,
                text,
                data_json,
                cells_done,
                cells_total,
                attempt,
                worker_id,
            ),
        )
        return seq

    def events_after(self, task_id: str, after_seq: int, limit: int = 500) -> list[sqlite3.Row]:
        return self.all(
            "SELECT * FROM events WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (task_id, after_seq, limit),
        )

    # -- attempts -------------------------------------------------------------------------------

    def get_attempt(self, task_id: str, attempt: int) -> sqlite3.Row | None:
        return self.one("SELECT * FROM attempts WHERE task_id = ? AND attempt = ?", (task_id, attempt))
