"""The pool's durable state in SQLite: users, tokens, join tokens, workers, tasks, attempts, events, blobs.

WAL mode with synchronous=FULL: a committed transaction survives kill -9 and power loss.

Writes have one way in: a *job* (a function of the write connection) handed to the store's single
writer thread. The thread takes every job waiting at that moment and runs them in one
`BEGIN IMMEDIATE` transaction, each inside its own savepoint (a job that raises rolls back only its
own changes), then commits once: one fsync for many writers (group commit). A job's future resolves
only after that commit, so whoever awaits it may say "stored" truthfully. Reads use a second
connection and see the last commit. A second process (`hivemind-nodepool user add --data-dir`) may
write while the server runs; busy_timeout makes each side wait its turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from hivemind_nodepool.pool.disk import is_disk_full
from hivemind_nodepool.pool.fleet import Amount
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.errors import DiskFull, InternalError
from hivemind_nodepool.protocol.states import TERMINAL_STATES

log = logging.getLogger(__name__)

DB_NAME = "pool.db"
MAX_GROUP = 512  # jobs per transaction: bounds how long one commit keeps the rest waiting
T = TypeVar("T")
Job = Callable[[sqlite3.Connection], T]

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
    """
    CREATE TABLE login_failures (
        name TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX login_failures_by_at ON login_failures(at);
    CREATE INDEX login_failures_by_name ON login_failures(name, at);
    """,
    # Queued tasks no scheduling pass has judged yet (1 is QUEUED): a pass over an unchanged fleet
    # reads only these, however long the queue.
    """
    CREATE INDEX tasks_unexplained ON tasks(queued_at, id) WHERE state = 1 AND pending_reason = '';
    """,
    # Taking access away: when a worker was revoked (its credential stops working); a disabled
    # user whose unfinished tasks the running pool still has to cancel (a `--data-dir` disable
    # cannot reach the workers); where each failed sign-in came from (the per-source limit).
    """
    ALTER TABLE workers ADD COLUMN revoked_at REAL NOT NULL DEFAULT 0;
    CREATE INDEX workers_by_join_token ON workers(join_token_id);
    ALTER TABLE users ADD COLUMN cancel_pending INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE login_failures ADD COLUMN source TEXT NOT NULL DEFAULT '';
    CREATE INDEX login_failures_by_source ON login_failures(source, at);
    """,
]


def _connect(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000
    )
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise InternalError(f"cannot put {path} in WAL mode (got {mode})")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


class _Writer:
    """The one thread that writes: runs queued jobs in group transactions, resolves their futures
    after the commit."""

    def __init__(
        self, conn: sqlite3.Connection, on_disk_full: Callable[[BaseException], BaseException] | None
    ) -> None:
        self.conn = conn
        self.on_disk_full = on_disk_full  # the disk guard's: it hears of the failure, gives the error
        self.jobs: queue.SimpleQueue[tuple[Job[Any], Future[Any]] | None] = queue.SimpleQueue()
        self.commits = 0  # transactions committed (for tests and benchmarks: jobs per commit)
        self.committed_jobs = 0
        self.thread = threading.Thread(target=self._run, name="hivemind-store-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            first = self.jobs.get()
            if first is None:
                return
            group = [first]
            stop = False
            while len(group) < MAX_GROUP:
                try:
                    item = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                group.append(item)
            self._commit(group)
            if stop:
                return

    def _commit(self, group: list[tuple[Job[Any], Future[Any]]]) -> None:
        live = [(job, future) for job, future in group if future.set_running_or_notify_cancel()]
        failed = self._transaction(live)
        if failed is None:
            return
        if is_disk_full(failed) and len(live) > 1:
            # One job's pages did not fit: the others may (the disk guard has given up its reserve
            # for them by now), so each gets a transaction of its own rather than failing with it.
            for item in live:
                error = self._transaction([item])
                if error is not None:
                    item[1].set_exception(self._failure(error))
            return
        for _job, future in live:
            future.set_exception(self._failure(failed))

    def _failure(self, exc: BaseException) -> BaseException:
        """What the waiters of a transaction that failed with `exc` get."""
        if is_disk_full(exc):
            return self.on_disk_full(exc) if self.on_disk_full else DiskFull("the pool's disk is full")
        return InternalError(f"the pool could not store a change: {exc}")

    def _transaction(self, live: list[tuple[Job[Any], Future[Any]]]) -> BaseException | None:
        """Run the jobs in one transaction and resolve their futures after its commit; when the
        transaction itself fails nothing of it is stored, and its error is returned unresolved."""
        outcomes: list[tuple[Future[Any], Any, BaseException | None]] = []
        db = self.conn
        try:
            db.execute("BEGIN IMMEDIATE")
            for job, future in live:
                db.execute("SAVEPOINT job")
                try:
                    value = job(db)
                except BaseException as exc:
                    if is_disk_full(exc):
                        raise  # SQLite may have rolled the whole transaction back already
                    db.execute("ROLLBACK TO job")
                    db.execute("RELEASE job")
                    outcomes.append((future, None, exc))
                else:
                    db.execute("RELEASE job")
                    outcomes.append((future, value, None))
            db.execute("COMMIT")
        except Exception as exc:  # the transaction itself failed: nothing of it is stored
            if is_disk_full(exc):
                log.warning("a write transaction failed: the disk is full (%s)", exc)
            else:
                log.exception("a write transaction failed")
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            return exc
        self.commits += 1
        self.committed_jobs += len(live)
        for future, value, error in outcomes:
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)
        return None

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join()


class Store:
    """The pool database: `write`/`awrite`/`write_nowait` for changes, `one`/`all` for reads."""

    def __init__(
        self,
        data_dir: Path,
        busy_timeout_ms: int = 15_000,
        on_disk_full: Callable[[BaseException], BaseException] | None = None,
    ) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / DB_NAME
        self._lock = threading.Lock()  # the read connection is used from the loop and from threads
        self._writer = _Writer(_connect(self.path, busy_timeout_ms), on_disk_full)
        self.conn = _connect(self.path, busy_timeout_ms)
        self.migrate()

    def close(self) -> None:
        self._writer.stop()
        self._writer.conn.close()
        self.conn.close()

    # -- plumbing -------------------------------------------------------------------------------

    def submit(self, job: Job[T]) -> Future[T]:
        """Queue a write job; its future resolves after the transaction holding it committed."""
        future: Future[T] = Future()
        self._writer.jobs.put((job, future))
        return future

    def write(self, job: Job[T]) -> T:
        """Run a write job and wait for its commit (threads and CLIs; a job calling it joins in)."""
        if threading.current_thread() is self._writer.thread:
            return job(self._writer.conn)
        return self.submit(job).result()

    async def awrite(self, job: Job[T]) -> T:
        """Run a write job; returns once it is committed, without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(job))

    def write_nowait(self, job: Job[Any], what: str) -> None:
        """Queue a write nobody waits for (bookkeeping); a failure is logged."""

        def report(future: Future[Any]) -> None:
            if future.exception() is not None:
                log.error("could not store %s: %s", what, future.exception())

        self.submit(job).add_done_callback(report)

    @property
    def commit_stats(self) -> tuple[int, int]:
        """(transactions committed, jobs they held) since start."""
        return self._writer.commits, self._writer.committed_jobs

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
        self.write(self._migrate)

    def _migrate(self, db: sqlite3.Connection) -> None:
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
        self.write(
            lambda db: db.execute(
                "INSERT INTO users (name, password_hash, admin, created_at) VALUES (?, ?, ?, ?)",
                (name, password_hash, int(admin), time.time()),
            )
        )
        row = self.get_user(name)
        assert row is not None
        return row

    def get_user(self, name: str) -> sqlite3.Row | None:
        return self.one("SELECT * FROM users WHERE name = ?", (name,))

    def list_users(self) -> list[sqlite3.Row]:
        return self.all("SELECT * FROM users ORDER BY name")

    def set_user_disabled(self, name: str, disabled: bool, cancel_tasks: bool = False) -> None:
        """Disable (or enable) an account; with cancel_tasks its unfinished tasks are marked for the
        pool to cancel (`users_to_settle`), which it does at once or, from another process, within
        its recheck interval."""

        def job(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE users SET disabled = ?, cancel_pending = ? WHERE name = ?",
                (int(disabled), int(disabled and cancel_tasks), name),
            )
            if disabled:  # a disabled user's tokens stop working at once
                db.execute("UPDATE tokens SET revoked = 1 WHERE user = ?", (name,))

        self.write(job)

    def users_to_settle(self) -> list[sqlite3.Row]:
        """Disabled users whose unfinished tasks are still to be cancelled."""
        return self.all("SELECT * FROM users WHERE disabled = 1 AND cancel_pending = 1")

    async def settled_user(self, name: str) -> None:
        await self.awrite(
            lambda db: db.execute("UPDATE users SET cancel_pending = 0 WHERE name = ?", (name,))
        )

    def token_states(self, token_hashes: Collection[str]) -> dict[str, sqlite3.Row]:
        """For the open streams' recheck: each token's row (with its user's admin and disabled)."""
        found: dict[str, sqlite3.Row] = {}
        hashes = list(token_hashes)
        for start in range(0, len(hashes), 500):
            part = hashes[start : start + 500]
            marks = ",".join("?" * len(part))
            for row in self.all(
                "SELECT t.hash, t.revoked, t.expires_at, u.admin, u.disabled FROM tokens t "  # noqa: S608
                f"JOIN users u ON u.name = t.user WHERE t.hash IN ({marks})",
                part,
            ):
                found[row["hash"]] = row
        return found

    async def add_token(self, token_hash: str, user: str, expires_at: float) -> None:
        await self.awrite(
            lambda db: db.execute(
                "INSERT INTO tokens (hash, user, created_at, expires_at) VALUES (?, ?, ?, ?)",
                (token_hash, user, time.time(), expires_at),
            )
        )

    def get_token(self, token_hash: str) -> sqlite3.Row | None:
        return self.one(
            "SELECT t.*, u.admin, u.disabled FROM tokens t JOIN users u ON u.name = t.user WHERE t.hash = ?",
            (token_hash,),
        )

    async def revoke_token(self, token_hash: str) -> None:
        await self.awrite(
            lambda db: db.execute("UPDATE tokens SET revoked = 1 WHERE hash = ?", (token_hash,))
        )

    # -- failed sign-ins (so the login rate limit survives a restart) ---------------------------

    async def record_login_failure(self, name: str, source: str, at: float, window: float) -> None:
        """Keep one failure; failures older than the window are dropped on the way (bounded table)."""

        def job(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM login_failures WHERE at < ?", (at - window,))
            db.execute("INSERT INTO login_failures (name, source, at) VALUES (?, ?, ?)", (name, source, at))

        await self.awrite(job)

    def clear_login_failures(self, name: str) -> None:
        """A sign-in succeeded: its name's failures no longer count; they still count for their
        source, so one good account cannot reset a source's allowance."""
        self.write_nowait(
            lambda db: db.execute("UPDATE login_failures SET name = '' WHERE name = ?", (name,)),
            "a sign-in",
        )

    def recent_login_failures(self, since: float) -> list[sqlite3.Row]:
        return self.all("SELECT name, source, at FROM login_failures WHERE at >= ? ORDER BY at", (since,))

    # -- join tokens ----------------------------------------------------------------------------

    def add_join_token(self, token_id: str, token_hash: str, expires_at: float, created_by: str) -> None:
        self.write(
            lambda db: db.execute(
                "INSERT INTO join_tokens (id, hash, created_at, expires_at, created_by) "
                "VALUES (?, ?, ?, ?, ?)",
                (token_id, token_hash, time.time(), expires_at, created_by),
            )
        )

    def get_join_token(self, token_id: str) -> sqlite3.Row | None:
        return self.one("SELECT * FROM join_tokens WHERE id = ?", (token_id,))

    def get_join_token_by_hash(self, token_hash: str) -> sqlite3.Row | None:
        return self.one("SELECT * FROM join_tokens WHERE hash = ?", (token_hash,))

    def list_join_tokens(self) -> list[sqlite3.Row]:
        return self.all("SELECT * FROM join_tokens ORDER BY created_at")

    def revoke_join_token(self, token_id: str) -> None:
        self.write(lambda db: db.execute("UPDATE join_tokens SET revoked = 1 WHERE id = ?", (token_id,)))

    # -- workers --------------------------------------------------------------------------------

    async def add_worker(  # noqa: PLR0917
        self, worker_id: str, name: str, credential_hash: str, join_token_id: str, facts: bytes, state: int
    ) -> None:
        await self.awrite(
            lambda db: db.execute(
                "INSERT INTO workers (id, name, credential_hash, join_token_id, facts, state, "
                "registered_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (worker_id, name, credential_hash, join_token_id, facts, state, time.time()),
            )
        )

    async def rejoin_worker(  # noqa: PLR0917
        self, worker_id: str, name: str, credential_hash: str, join_token_id: str, facts: bytes, state: int
    ) -> None:
        """The same worker registering again: a new credential (the old one stops working)."""
        await self.awrite(
            lambda db: db.execute(
                "UPDATE workers SET name = ?, credential_hash = ?, join_token_id = ?, facts = ?, "
                "state = ? WHERE id = ?",
                (name, credential_hash, join_token_id, facts, state, worker_id),
            )
        )

    def remove_worker(self, worker_id: str) -> None:
        """Forget a worker (its tasks' history keeps its id); durable when this returns."""
        self.write(lambda db: db.execute("DELETE FROM workers WHERE id = ?", (worker_id,)))

    def get_worker(self, worker_id: str) -> sqlite3.Row | None:
        return self.one("SELECT * FROM workers WHERE id = ?", (worker_id,))

    def get_worker_by_credential(self, credential_hash: str) -> sqlite3.Row | None:
        return self.one("SELECT * FROM workers WHERE credential_hash = ?", (credential_hash,))

    def list_workers(self) -> list[sqlite3.Row]:
        return self.all("SELECT * FROM workers ORDER BY registered_at")

    def workers_of_join_token(self, join_token_id: str) -> list[sqlite3.Row]:
        return self.all(
            "SELECT * FROM workers WHERE join_token_id = ? ORDER BY registered_at", (join_token_id,)
        )

    def revoked_workers(self) -> list[sqlite3.Row]:
        return self.all("SELECT * FROM workers WHERE revoked_at > 0")

    def revoke_worker(self, worker_id: str) -> None:
        """Its credential stops working at once; a revoked worker stays revoked."""
        self.write(
            lambda db: db.execute(
                "UPDATE workers SET revoked_at = ?, state = ? WHERE id = ? AND revoked_at = 0",
                (time.time(), pb.WORKER_REVOKED, worker_id),
            )
        )

    def update_worker(self, worker_id: str, **fields: Any) -> None:
        """Queue a change to a worker's row. The pool's live view (the Fleet) is the authority while
        it runs; the row is what a restart and `status` read, so nobody needs to wait for it.
        Writes run in order, so a later update always lands after an earlier one."""
        if not fields:
            return
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self.write_nowait(
            lambda db: db.execute(
                f"UPDATE workers SET {assignments} WHERE id = ?",  # noqa: S608 (names are ours)
                (*fields.values(), worker_id),
            ),
            f"worker {worker_id}'s state",
        )

    # -- blobs ----------------------------------------------------------------------------------

    def blob_hashes(self) -> set[str]:
        return {row["sha256"] for row in self.all("SELECT sha256 FROM blobs")}

    def referenced_blobs(self) -> set[str]:
        """Blobs that tasks still need: every live bundle and result."""
        rows = self.all("SELECT bundle_sha256, result_sha256 FROM tasks WHERE blobs_expired = 0")
        return {h for row in rows for h in (row["bundle_sha256"], row["result_sha256"]) if h}

    def delete_blob_rows(self, hashes: Iterable[str]) -> None:
        rows = [(h,) for h in hashes]
        if rows:
            self.write(lambda db: db.executemany("DELETE FROM blobs WHERE sha256 = ?", rows))

    def expire_finished_tasks(self, before: float) -> int:
        """Mark tasks that ended before `before` as past retention; their blobs become collectable."""
        terminal = ",".join(str(int(s)) for s in TERMINAL_STATES)
        return self.write(
            lambda db: (
                db.execute(
                    f"UPDATE tasks SET blobs_expired = 1 WHERE blobs_expired = 0 "  # noqa: S608
                    f"AND state IN ({terminal}) AND finished_at < ?",
                    (before,),
                ).rowcount
            )
        )

    # -- tasks ----------------------------------------------------------------------------------

    def get_task(self, task_id: str) -> sqlite3.Row | None:
        return self.one("SELECT * FROM tasks WHERE id = ?", (task_id,))

    def tasks_by_ids(self, task_ids: Sequence[str]) -> list[sqlite3.Row]:
        if not task_ids:
            return []
        marks = ",".join("?" * len(task_ids))
        return self.all(f"SELECT * FROM tasks WHERE id IN ({marks})", list(task_ids))  # noqa: S608

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

    def unfinished_tasks_of(self, owner: str) -> list[sqlite3.Row]:
        terminal = ",".join(str(int(s)) for s in TERMINAL_STATES)
        return self.all(
            f"SELECT * FROM tasks WHERE owner = ? AND state NOT IN ({terminal}) "  # noqa: S608
            "ORDER BY created_at",
            (owner,),
        )

    def tasks_in_states(self, states: Collection[int]) -> list[sqlite3.Row]:
        marks = ",".join("?" * len(states))
        return self.all(
            f"SELECT * FROM tasks WHERE state IN ({marks}) ORDER BY queued_at, id",  # noqa: S608
            [int(s) for s in states],
        )

    def queued_tasks(self, unexplained_only: bool = False) -> list[sqlite3.Row]:
        """Tasks waiting to be placed; with unexplained_only, those no scheduling pass has judged."""
        if unexplained_only:  # literal terms, so SQLite can use the partial index
            return self.all(
                f"SELECT * FROM tasks INDEXED BY tasks_unexplained WHERE state = {int(pb.QUEUED)} "  # noqa: S608
                "AND pending_reason = '' "
                "ORDER BY queued_at, id"
            )
        return self.all("SELECT * FROM tasks WHERE state = ? ORDER BY queued_at, id", (pb.QUEUED,))

    def usage_by_owner(self, states: Collection[int]) -> dict[str, Amount]:
        """What each user's tasks in `states` hold: the scheduler's fair-share input."""
        marks = ",".join("?" * len(states))
        rows = self.all(
            f"SELECT owner, sum(cpus) AS cpus, sum(memory_bytes) AS memory, sum(gpus) AS gpus "  # noqa: S608
            f"FROM tasks WHERE state IN ({marks}) GROUP BY owner",
            [int(s) for s in states],
        )
        return {r["owner"]: Amount(float(r["cpus"]), int(r["memory"]), int(r["gpus"])) for r in rows}

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
