"""WatchTasks' fan-out: each changed task is read once and offered to every watcher that may see it.

The notifier tells `changed(task_id)` about every change. Ids gather until the event loop's next
turn; then the changed rows are read in one query, each becomes a Task message once, and it is
offered to the watchers whose filter matches (their owner's tasks, or all of them for an admin's
all_users). Nothing is read while nobody watches.

Each watcher holds a bounded queue keyed by task id: a newer change of a task replaces the one not
yet sent, so a reader that falls behind holds at most `limit` tasks. Past that its queue is dropped
and it is sent `resync` (read the list again). Offering never waits: a slow or stuck reader slows
only its own stream, never the pool.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from hivemind_nodepool.pool.aio import wait_event
from hivemind_nodepool.pool.store import Store
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.errors import HiveMindError, PoolUnavailable, RateLimited

log = logging.getLogger(__name__)

QUEUE_LIMIT = 1000  # distinct tasks waiting for one watcher before it is told to resync
MAX_WATCHERS_PER_USER = 32
READ_BATCH = 500  # ids per query (SQLite's variable limit is far above this)


class TaskWatcher:
    """One WatchTasks stream's queue."""

    def __init__(self, user: str, owner: str | None, limit: int) -> None:
        self.user = user  # who watches
        self.owner = owner  # whose tasks: None for every user's
        self.limit = limit
        self.pending: OrderedDict[str, pb.Task] = OrderedDict()
        self.fell_behind = False
        self.closed: HiveMindError | None = None  # why the pool ended this stream, once it did
        self.resyncs = 0
        self._wake = asyncio.Event()

    def wants(self, owner: str) -> bool:
        return self.owner is None or self.owner == owner

    def offer(self, task: pb.Task) -> None:
        if self.fell_behind:
            return  # the reader reads the whole list anyway
        self.pending.pop(task.id, None)  # the newest change of a task goes last
        self.pending[task.id] = task
        if len(self.pending) > self.limit:
            self.pending.clear()
            self.fell_behind = True
        self._wake.set()

    def close(self, error: HiveMindError) -> None:
        """End the stream with error: nothing queued is sent after it."""
        self.closed = error
        self.pending.clear()
        self._wake.set()

    async def next(self, timeout: float | None = None) -> pb.TaskFeedMessage | None:
        """The next message to send; None when nothing came within timeout seconds."""
        while True:
            if self.closed is not None:
                raise self.closed
            if self.fell_behind:
                self.fell_behind = False
                self.resyncs += 1
                return pb.TaskFeedMessage(resync=pb.Empty())
            if self.pending:
                _, task = self.pending.popitem(last=False)
                return pb.TaskFeedMessage(task=task)
            self._wake.clear()
            if not await wait_event(self._wake, timeout):
                return None


class TaskFeedHub:
    """Every open WatchTasks stream, and the one reader of changed tasks they share."""

    def __init__(
        self, store: Store, describe: Callable[[sqlite3.Row], pb.Task], limit: int = QUEUE_LIMIT
    ) -> None:
        self.store = store
        self.describe = describe
        self.limit = limit
        self.watchers: set[TaskWatcher] = set()
        self.pushed = 0  # task messages offered, for tests and diagnostics
        self._changed: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False

    def changed(self, task_id: str) -> None:
        if not self.watchers or self._loop is None:
            return
        self._changed.add(task_id)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        ids = sorted(self._changed)
        self._changed.clear()
        if not self.watchers:
            return
        for start in range(0, len(ids), READ_BATCH):
            for row in self.store.tasks_by_ids(ids[start : start + READ_BATCH]):
                task: pb.Task | None = None
                for watcher in self.watchers:
                    if watcher.wants(row["owner"]):
                        task = task or self.describe(row)
                        watcher.offer(task)
                        self.pushed += 1

    @contextmanager
    def watch(self, user: str, owner: str | None) -> Iterator[TaskWatcher]:
        """Register a watcher of `owner`'s tasks (None: everyone's) for the caller `user`."""
        if sum(1 for w in self.watchers if w.user == user) >= MAX_WATCHERS_PER_USER:
            raise RateLimited(f"{user} already has {MAX_WATCHERS_PER_USER} task feeds open; close one first")
        self._loop = asyncio.get_running_loop()
        watcher = TaskWatcher(user, owner, self.limit)
        self.watchers.add(watcher)
        try:
            yield watcher
        finally:
            self.watchers.discard(watcher)

    def close(self, reason: str) -> None:
        """End every stream with UNAVAILABLE (the pool is going away); clients reconnect."""
        for watcher in list(self.watchers):
            watcher.close(PoolUnavailable(reason))
