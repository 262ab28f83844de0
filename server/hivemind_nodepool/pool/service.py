"""The NodePool service: what people and their tools call (sign-in, tasks, workers, admin)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator

import grpc

from hivemind_nodepool.pool import accounts, auth, views
from hivemind_nodepool.pool.aio import wait_event
from hivemind_nodepool.pool.app import Pool
from hivemind_nodepool.pool.blobs import receive_chunks, receive_head
from hivemind_nodepool.pool.fleet import Amount, WorkerEntry
from hivemind_nodepool.pool.rpc import stream, unary
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.proto import nodepool_pb2_grpc as pb_grpc
from hivemind_nodepool.protocol import manifest as manifests
from hivemind_nodepool.protocol.bundle import list_files
from hivemind_nodepool.protocol.errors import (
    BundleError,
    Conflict,
    InvalidInput,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from hivemind_nodepool.protocol.states import TERMINAL_STATES
from hivemind_nodepool.protocol.wire import CHUNK_SIZE, MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

MAX_PAGE = 500
MAX_PAGE_BYTES = MAX_MESSAGE_BYTES // 2
DEFAULT_PAGE = 50
MAX_TTL = 365 * 86400
SMALL_BUNDLE = 256 * 1024


def _ttl(requested: int, default: float) -> float:
    if requested < 0:
        raise InvalidInput("a lifetime cannot be negative")
    if requested > MAX_TTL:
        raise InvalidInput("a lifetime longer than a year is not allowed")
    return float(requested) if requested else default


class NodePoolService(pb_grpc.NodePoolServicer):
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.store = pool.store
        self.book = pool.book

    # -- helpers --------------------------------------------------------------------------------

    def _visible_task(self, task_id: str) -> sqlite3.Row:
        """The caller's task (any task for an admin). Another user's task is NOT_FOUND with the
        very message an unknown id gets, so ids cannot be probed."""
        principal = auth.current_user()
        row = self.book.require_task(task_id)
        if row["owner"] != principal.name and not principal.admin:
            raise NotFound(f"no task {task_id!r}")
        return row

    def _task(self, row: sqlite3.Row, timeline: bool = True) -> pb.Task:
        return self.pool.describe_task(row, timeline)

    # -- sign-in --------------------------------------------------------------------------------

    @unary
    async def Login(
        self, request: pb.LoginRequest, context: grpc.aio.ServicerContext[pb.LoginRequest, pb.LoginResponse]
    ) -> pb.LoginResponse:
        if len(request.username) > 256 or len(request.password) > 1024:
            raise InvalidInput("user name or password too long")
        ttl = _ttl(request.ttl_seconds, self.pool.settings.token_ttl)
        source = auth.login_source(context.peer())
        token, expires_at, row = await self.pool.auth.login(request.username, request.password, ttl, source)
        log.info("user %s signed in", request.username)
        return pb.LoginResponse(token=token, expires_at=expires_at, user=views.user(row))

    @unary
    async def Logout(
        self, request: pb.Empty, context: grpc.aio.ServicerContext[pb.Empty, pb.Empty]
    ) -> pb.Empty:
        token_hash = auth.current_user().token_hash
        await self.store.revoke_token(token_hash)
        self.pool.auth.token_revoked(token_hash)  # its open streams end now
        return pb.Empty()

    @unary
    async def WhoAmI(
        self, request: pb.Empty, context: grpc.aio.ServicerContext[pb.Empty, pb.User]
    ) -> pb.User:
        row = self.store.get_user(auth.current_user().name)
        if row is None:
            raise NotFound("your account no longer exists")
        return views.user(row)

    # -- tasks ----------------------------------------------------------------------------------

    @unary
    async def SubmitTask(
        self,
        request_iterator: AsyncIterator[pb.SubmitRequest],
        context: grpc.aio.ServicerContext[pb.SubmitRequest, pb.Task],
    ) -> pb.Task:
        principal = auth.current_user()
        settings = self.pool.settings
        parts = request_iterator.__aiter__()
        first = await receive_head(
            parts,
            "manifest",
            "empty submission: send the manifest first",
            "a submission starts with the manifest, then the bundle's chunks, then its sha256",
        )
        manifest = first.manifest
        manifests.validate(manifest, settings.max_timeout)
        writer = self.pool.blobs.writer(settings.max_bundle_size)
        sha = ""
        try:
            claimed = await receive_chunks(parts, writer, "a submission", "manifest")
            if writer.size == 0:
                raise InvalidInput("the bundle is empty; send a ZIP with the entry notebook")
            await writer.verify(claimed)
            sha = writer.sha256
            self.pool.collector.in_flight.add(sha)
            try:
                if writer.size <= SMALL_BUNDLE:  # a thread hop costs more than reading a small ZIP
                    files = list_files(writer.tmp_path)
                else:
                    files = await asyncio.to_thread(list_files, writer.tmp_path)
            except BundleError as exc:
                raise InvalidInput(f"the bundle was refused: {exc}") from None
            manifests.check_entry_present(manifest, files)
            await writer.finish()
            filled = manifests.with_defaults(manifest, settings.default_timeout, settings.default_max_retries)
            # A long upload may outlive its sign-in: a disabled account adds no task.
            self.pool.auth.recheck(principal)
            row = await self.book.submit(principal.name, filled, sha, writer.size)
        except BaseException:
            writer.abort()
            raise
        finally:
            self.pool.collector.in_flight.discard(sha)
        self.pool.metrics.submitted.inc()
        log.info("task %s submitted by %s (%d bytes)", row["id"], principal.name, writer.size)
        return self._task(row)

    @unary
    async def GetTask(
        self, request: pb.TaskRef, context: grpc.aio.ServicerContext[pb.TaskRef, pb.Task]
    ) -> pb.Task:
        return self._task(self._visible_task(request.task_id))

    @unary
    async def ListTasks(
        self,
        request: pb.ListTasksRequest,
        context: grpc.aio.ServicerContext[pb.ListTasksRequest, pb.ListTasksResponse],
    ) -> pb.ListTasksResponse:
        principal = auth.current_user()
        if request.all_users and not principal.admin:
            raise PermissionDenied("only admins list every user's tasks")
        if request.page_size < 0:
            raise InvalidInput("page_size cannot be negative")
        size = min(request.page_size or DEFAULT_PAGE, MAX_PAGE)
        offset = 0
        if request.page_token:
            if not request.page_token.isdigit() or len(request.page_token) > 12:
                raise InvalidInput("page_token is not one this pool gave out")
            offset = int(request.page_token)
        known = set(pb.TaskState.values()) - {pb.TASK_STATE_UNSPECIFIED}
        for state in request.states:
            if state not in known:
                raise InvalidInput(f"unknown task state {state}")
        owner = None if (request.all_users and principal.admin) else principal.name
        rows, total = self.store.list_tasks(owner, list(request.states), size, offset)
        # A page also ends before it outgrows the message limit (parameters can be up to 1 MiB a
        # task); the caller follows next_page_token for the rest.
        tasks: list[pb.Task] = []
        page_bytes = 0
        for row in rows:
            task = self._task(row, timeline=False)
            page_bytes += task.ByteSize()
            if tasks and page_bytes > MAX_PAGE_BYTES:
                break
            tasks.append(task)
        end = offset + len(tasks)
        following = str(end) if end < total else ""
        return pb.ListTasksResponse(tasks=tasks, next_page_token=following, total=total)

    @unary
    async def CancelTask(
        self, request: pb.TaskRef, context: grpc.aio.ServicerContext[pb.TaskRef, pb.Task]
    ) -> pb.Task:
        row = self._visible_task(request.task_id)
        await self.book.cancel(row, f"cancelled by {auth.current_user().name}")
        return self._task(self.book.require_task(row["id"]))

    @unary
    async def RetryTask(
        self, request: pb.TaskRef, context: grpc.aio.ServicerContext[pb.TaskRef, pb.Task]
    ) -> pb.Task:
        row = self._visible_task(request.task_id)
        if row["state"] not in TERMINAL_STATES:
            raise Conflict(f"task {row['id']} is still {pb.TaskState.Name(row['state'])}; cancel it first")
        if row["blobs_expired"] or not self.pool.blobs.exists(row["bundle_sha256"]):
            raise NotFound(
                f"the bundle of task {row['id']} is gone (past the retention period); submit again"
            )
        manifest = pb.Manifest.FromString(row["manifest"])
        sha = row["bundle_sha256"]
        self.pool.collector.in_flight.add(sha)  # the collector must not take it while this commits
        try:
            retry = await self.book.submit(
                row["owner"], manifest, sha, row["bundle_size"], retry_of=row["id"]
            )
        finally:
            self.pool.collector.in_flight.discard(sha)
        return self._task(retry)

    @stream
    async def WatchTask(
        self, request: pb.WatchRequest, context: grpc.aio.ServicerContext[pb.WatchRequest, pb.TaskEvent]
    ) -> AsyncIterator[pb.TaskEvent]:
        row = self._visible_task(request.task_id)
        if request.after_seq < 0:
            raise InvalidInput("after_seq cannot be negative")
        task_id = row["id"]
        last = request.after_seq
        principal = auth.current_user()
        with (
            self.pool.auth.hold(principal, needs_admin=row["owner"] != principal.name) as held,
            self.pool.notifier.subscribe(task_id) as wake,
        ):
            held.on_end(wake.set)  # a revocation wakes the wait below, so the stream ends at once
            while True:
                held.check()
                wake.clear()
                batch = self.store.events_after(task_id, last)
                for item in batch:
                    held.check()
                    last = item["seq"]
                    yield views.event(item)
                    if (
                        request.follow
                        and item["kind"] == pb.TaskEvent.STATE
                        and item["state"] in TERMINAL_STATES
                    ):
                        return
                if len(batch) == 500:
                    continue  # more stored events to send before waiting
                if not request.follow:
                    return
                current = self.store.get_task(task_id)
                if current is None or (
                    current["state"] in TERMINAL_STATES and current["last_event_seq"] <= last
                ):
                    return
                # Re-read at least every 10 s anyway: cheap, and covers writes from another process.
                await wait_event(wake, 10.0)

    @stream
    async def WatchTasks(
        self,
        request: pb.WatchTasksRequest,
        context: grpc.aio.ServicerContext[pb.WatchTasksRequest, pb.TaskFeedMessage],
    ) -> AsyncIterator[pb.TaskFeedMessage]:
        principal = auth.current_user()
        if request.all_users and not principal.admin:
            raise PermissionDenied("only admins watch every user's tasks")
        owner = None if request.all_users else principal.name
        gauge = self.pool.metrics.task_feeds
        with (
            self.pool.auth.hold(principal, needs_admin=request.all_users) as held,
            self.pool.feed.watch(principal.name, owner) as watcher,
        ):
            held.on_end(lambda: watcher.close(held.error or Unauthenticated("signed out")))
            gauge.inc()
            try:
                yield pb.TaskFeedMessage(ready=pb.Empty())
                while True:
                    message = await watcher.next()
                    held.check()
                    if message is not None:
                        yield message
            finally:
                gauge.dec()

    @stream
    async def FetchResult(
        self, request: pb.TaskRef, context: grpc.aio.ServicerContext[pb.TaskRef, pb.Chunk]
    ) -> AsyncIterator[pb.Chunk]:
        row = self._visible_task(request.task_id)
        if row["blobs_expired"]:
            raise NotFound(f"the result of task {row['id']} was removed after the retention period")
        if not row["result_sha256"]:
            raise NotFound(f"task {row['id']} has no result ({pb.TaskState.Name(row['state'])})")
        what = f"the result of task {row['id']}"
        principal = auth.current_user()
        with self.pool.auth.hold(principal, needs_admin=row["owner"] != principal.name) as held:
            for block in self.pool.blobs.read_chunks(row["result_sha256"], CHUNK_SIZE, what):
                held.check()
                yield pb.Chunk(data=block)

    # -- the pool -------------------------------------------------------------------------------

    @unary
    async def ListWorkers(
        self, request: pb.Empty, context: grpc.aio.ServicerContext[pb.Empty, pb.ListWorkersResponse]
    ) -> pb.ListWorkersResponse:
        principal = auth.current_user()
        answer = pb.ListWorkersResponse()
        rows = self._visible_rows(principal.admin)
        entries = [self.pool.fleet.get(row["id"]) or WorkerEntry.from_row(row) for row in rows]
        # Task ids are shown to their owner (and admins); everyone else sees how many run.
        running = sorted({task_id for entry in entries for task_id, _ in entry.allocations})
        mine = None if principal.admin else self._owned_by(principal.name, running)
        for row, entry in zip(rows, entries, strict=True):
            answer.workers.append(views.worker(entry, row, visible=mine, admin=principal.admin))
        return answer

    def _visible_rows(self, admin: bool) -> list[sqlite3.Row]:
        """Every worker for an admin; for a user, without those offline for longer than the pool's
        offline_worker_hidden_after (a machine that left long ago is not part of their pool)."""
        rows = self.store.list_workers()
        if admin:
            return rows
        cutoff = time.time() - self.pool.settings.offline_worker_hidden_after
        shown = []
        for row in rows:
            entry = self.pool.fleet.get(row["id"]) or WorkerEntry.from_row(row)
            away = row["revoked_at"] or (not entry.connected and not entry.present)
            if not away or max(entry.last_heartbeat_at, row["registered_at"]) >= cutoff:
                shown.append(row)
        return shown

    def _owned_by(self, owner: str, task_ids: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(task_ids), 500):
            for row in self.store.tasks_by_ids(task_ids[start : start + 500]):
                if row["owner"] == owner:
                    found.add(row["id"])
        return found

    @unary
    async def GetPoolStatus(
        self, request: pb.Empty, context: grpc.aio.ServicerContext[pb.Empty, pb.PoolStatus]
    ) -> pb.PoolStatus:
        principal = auth.current_user()
        from hivemind_nodepool import __version__

        status = pb.PoolStatus(version=__version__)
        capacity = Amount()
        allocated = Amount()
        for entry in self.pool.fleet.workers.values():
            if entry.live:
                status.workers_online += 1
                capacity = capacity + entry.capacity
                allocated = allocated + entry.allocated
        status.workers_total = len(self._visible_rows(principal.admin))
        for state, count in self.store.count_by_state().items():
            status.tasks_by_state[pb.TaskState.Name(state)] = count  # type: ignore[arg-type]
        status.capacity.CopyFrom(capacity.to_pb())
        status.allocated.CopyFrom(allocated.to_pb())
        status.disk_full, status.disk_free_bytes = self.pool.disk.full, self.pool.disk.free
        return status

    # -- admin ----------------------------------------------------------------------------------

    @unary
    async def CreateUser(
        self, request: pb.CreateUserRequest, context: grpc.aio.ServicerContext[pb.CreateUserRequest, pb.User]
    ) -> pb.User:
        admin = auth.current_admin()
        # bcrypt takes a while: off the event loop
        user = await asyncio.to_thread(
            accounts.add_user, self.store, request.name, request.password, request.admin
        )
        log.info("user %s created by %s", user.name, admin.name)
        return user

    @unary
    async def ListUsers(
        self, request: pb.Empty, context: grpc.aio.ServicerContext[pb.Empty, pb.ListUsersResponse]
    ) -> pb.ListUsersResponse:
        auth.current_admin()
        return pb.ListUsersResponse(users=accounts.list_users(self.store))

    @unary
    async def DisableUser(
        self,
        request: pb.DisableUserRequest,
        context: grpc.aio.ServicerContext[pb.DisableUserRequest, pb.User],
    ) -> pb.User:
        admin = auth.current_admin()
        cancel_tasks = not request.keep_tasks
        user = accounts.disable_user(self.store, request.name, by=admin.name, cancel_tasks=cancel_tasks)
        await self.pool.revocations.user_disabled(request.name, cancel_tasks, by=admin.name)
        return user

    @unary
    async def CreateJoinToken(
        self,
        request: pb.CreateJoinTokenRequest,
        context: grpc.aio.ServicerContext[pb.CreateJoinTokenRequest, pb.JoinToken],
    ) -> pb.JoinToken:
        admin = auth.current_admin()
        ttl = _ttl(request.ttl_seconds, self.pool.settings.join_token_ttl)
        return accounts.create_join_token(self.store, admin.name, ttl)

    @unary
    async def ListJoinTokens(
        self, request: pb.Empty, context: grpc.aio.ServicerContext[pb.Empty, pb.ListJoinTokensResponse]
    ) -> pb.ListJoinTokensResponse:
        auth.current_admin()
        return pb.ListJoinTokensResponse(tokens=accounts.list_join_tokens(self.store))

    @unary
    async def RevokeJoinToken(
        self,
        request: pb.RevokeJoinTokenRequest,
        context: grpc.aio.ServicerContext[pb.RevokeJoinTokenRequest, pb.JoinToken],
    ) -> pb.JoinToken:
        admin = auth.current_admin()
        token = accounts.revoke_join_token(self.store, request.id)
        log.info("join token %s revoked by %s", request.id, admin.name)
        if request.workers:
            for worker_id in accounts.revoke_workers_of(self.store, request.id):
                await self.pool.revocations.worker_revoked(worker_id, admin.name)
        return token

    @unary
    async def DrainWorker(
        self, request: pb.WorkerRef, context: grpc.aio.ServicerContext[pb.WorkerRef, pb.Worker]
    ) -> pb.Worker:
        auth.current_admin()
        row = self.store.get_worker(request.worker_id) if request.worker_id else None
        entry = self.pool.fleet.get(request.worker_id)
        if row is None or entry is None or not entry.present:
            raise NotFound(f"no online worker {request.worker_id!r}")
        entry.state = pb.WORKER_DRAINING
        self.store.update_worker(entry.worker_id, state=pb.WORKER_DRAINING)
        entry.send(pb.PoolMessage(drain=pb.Empty()))
        log.info("worker %s draining (asked by %s)", entry.name, auth.current().name)
        return views.worker(entry, row)

    @unary
    async def RevokeWorker(
        self, request: pb.WorkerRef, context: grpc.aio.ServicerContext[pb.WorkerRef, pb.Worker]
    ) -> pb.Worker:
        admin = auth.current_admin()
        accounts.revoke_worker(self.store, request.worker_id)
        entry = await self.pool.revocations.worker_revoked(request.worker_id, admin.name)
        row = self.store.get_worker(request.worker_id)
        assert row is not None
        return views.worker(entry, row)

    @unary
    async def RemoveWorker(
        self, request: pb.WorkerRef, context: grpc.aio.ServicerContext[pb.WorkerRef, pb.Worker]
    ) -> pb.Worker:
        admin = auth.current_admin()
        removed = accounts.remove_worker(self.store, request.worker_id, self.pool.fleet)
        log.info("worker %s (%s) removed by %s", removed.name, removed.id, admin.name)
        return removed
