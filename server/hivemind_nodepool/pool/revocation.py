"""Taking access away while the pool runs: a disabled account, a revoked token, a revoked worker.

Done through the pool (an admin's RPC, a sign-out), it takes effect at once: the caller's open
streams end with UNAUTHENTICATED before the answer is sent, a disabled user's unfinished tasks are
cancelled (unless the admin keeps them), and a revoked worker's stream ends and its running
attempts go back to the queue without spending a retry. Done by another process on the pool's
files (`hivemind-nodepool ... --data-dir`), or by a token's expiry, it is found by the periodic
recheck, which runs every `feed_auth_recheck` seconds whatever the traffic.
"""

from __future__ import annotations

import contextlib
import logging

from hivemind_nodepool.pool.auth import Authenticator
from hivemind_nodepool.pool.fleet import Fleet, WorkerEntry
from hivemind_nodepool.pool.lifecycle import TaskBook
from hivemind_nodepool.pool.loops import repeat
from hivemind_nodepool.pool.store import Store
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.errors import Conflict
from hivemind_nodepool.protocol.states import ON_WORKER_STATES

log = logging.getLogger(__name__)


class Revocations:
    def __init__(
        self, store: Store, auth: Authenticator, book: TaskBook, fleet: Fleet, interval: float
    ) -> None:
        self.store = store
        self.auth = auth
        self.book = book
        self.fleet = fleet
        self.interval = interval

    # -- users ----------------------------------------------------------------------------------

    async def user_disabled(self, name: str, cancel_tasks: bool, by: str) -> int:
        """The account was just disabled (`accounts.disable_user`): its open streams end now; with
        cancel_tasks its queued and running tasks are cancelled. Returns how many were."""
        self.auth.user_disabled(name)
        log.info("user %s disabled by %s (%s tasks)", name, by, "cancelling" if cancel_tasks else "keeping")
        if not cancel_tasks:
            return 0
        return await self.cancel_tasks_of(name, f"cancelled: the account {name} was disabled by {by}")

    async def cancel_tasks_of(self, name: str, reason: str) -> int:
        cancelled = 0
        for row in self.store.unfinished_tasks_of(name):
            with contextlib.suppress(Conflict):  # it ended meanwhile
                await self.book.cancel(row, reason)
                cancelled += 1
        await self.store.settled_user(name)
        if cancelled:
            log.info("cancelled %d unfinished task(s) of disabled user %s", cancelled, name)
        return cancelled

    # -- workers --------------------------------------------------------------------------------

    async def worker_revoked(self, worker_id: str, by: str) -> WorkerEntry:
        """The worker was just revoked (`accounts.revoke_worker`): end its stream, requeue what it
        runs."""
        entry = await self.retire(worker_id, f"worker revoked by {by}")
        log.info("worker %s (%s) revoked by %s", entry.name, worker_id, by)
        return entry

    async def retire(self, worker_id: str, why: str) -> WorkerEntry:
        """The in-memory side of a revoked worker: never scheduled again, its Connect stream ended
        (with UNAUTHENTICATED, see the gateway), its running attempts requeued without a retry."""
        entry = self.fleet.get(worker_id)
        if entry is None:
            row = self.store.get_worker(worker_id)
            assert row is not None, worker_id
            entry = WorkerEntry.from_row(row)
            self.fleet.add(entry)
        entry.state = pb.WORKER_REVOKED
        if entry.outbox is not None:
            entry.outbox.put_nowait(None)
            entry.outbox = None
        entry.reported = set()
        entry.zombies = set()
        entry.allocations.clear()
        entry.left_draining = False
        rows = [r for r in self.store.tasks_in_states(ON_WORKER_STATES) if r["worker_id"] == worker_id]
        for row in rows:
            await self.book.requeue(row, f"{why} ({entry.name})", spend_retry=False)
        self.book.wake.set()
        return entry

    # -- the periodic recheck -------------------------------------------------------------------

    async def check(self) -> None:
        self.auth.recheck_streams()
        for row in self.store.users_to_settle():
            await self.cancel_tasks_of(row["name"], f"cancelled: the account {row['name']} was disabled")
        for row in self.store.revoked_workers():
            entry = self.fleet.get(row["id"])
            if entry is None or entry.state != pb.WORKER_REVOKED:
                await self.retire(row["id"], "worker revoked")

    async def run(self) -> None:
        """A first pass at once (what was revoked or disabled while the pool was down), then one
        every interval."""
        try:
            await self.check()
        except Exception:
            log.exception("the access recheck failed; retrying")
        await repeat(self.check, self.interval, "the access recheck failed; retrying", logger=log)
