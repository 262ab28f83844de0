"""The WorkerGateway service: what workers call. Workers only dial out; the pool answers on the
Connect stream they open. Every report names an attempt; a report about anything but the task's
current attempt on this worker is refused with FAILED_PRECONDITION (fencing). One exception: the
attempt a user cancelled may still upload its result so far, once (`lifecycle.fenced_upload`)."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import NoReturn

import grpc

from hivemind_nodepool.pool import auth
from hivemind_nodepool.pool.aio import within
from hivemind_nodepool.pool.app import Pool
from hivemind_nodepool.pool.blobs import receive_chunks, receive_head
from hivemind_nodepool.pool.fleet import AttemptKey, WorkerEntry
from hivemind_nodepool.pool.lifecycle import amount_of, is_partial_result
from hivemind_nodepool.pool.rpc import stream, unary
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.proto import nodepool_pb2_grpc as pb_grpc
from hivemind_nodepool.protocol.bundle import check_archive
from hivemind_nodepool.protocol.errors import (
    BundleError,
    Conflict,
    InvalidInput,
    ResultRefused,
    TooLarge,
    Unauthenticated,
)
from hivemind_nodepool.protocol.manifest import LABEL_KEY, LABEL_VALUE
from hivemind_nodepool.protocol.rejoin import proof_matches
from hivemind_nodepool.protocol.states import ON_WORKER_STATES
from hivemind_nodepool.protocol.units import format_size
from hivemind_nodepool.protocol.wire import CHUNK_SIZE

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 30.0
MAX_BATCH = 1000
MAX_TEXT = 256 * 1024
MAX_DATA_JSON = 4 * 1024 * 1024
PERSIST_HEARTBEAT_EVERY = 30.0  # seconds between writes of a worker's last heartbeat time
EVENT_KINDS = {
    pb.TaskEvent.STDOUT,
    pb.TaskEvent.STDERR,
    pb.TaskEvent.DISPLAY,
    pb.TaskEvent.PROGRESS,
    pb.TaskEvent.NOTICE,
    pb.TaskEvent.PHASE,
}
OUTCOMES = {pb.SUCCEEDED, pb.FAILED, pb.CANCELLED, pb.TIMED_OUT}


def _check_text(value: str, what: str, limit: int) -> None:
    if len(value) > limit:
        raise InvalidInput(f"{what} is longer than {limit} characters")
    if any(ord(c) < 32 for c in value):
        raise InvalidInput(f"{what} contains control characters")


def _check_gpus(gpus: Sequence[pb.Gpu]) -> None:
    if len(gpus) > 64:
        raise InvalidInput("more than 64 GPUs")
    for gpu in gpus:
        _check_text(gpu.name, "a GPU name", 200)
        if gpu.memory_bytes < 0:
            raise InvalidInput("a GPU's memory cannot be negative")


def _check_worker_labels(labels: Mapping[str, str]) -> None:
    if len(labels) > 64:
        raise InvalidInput("at most 64 labels")
    for key, value in labels.items():
        if not LABEL_KEY.match(key) or not LABEL_VALUE.match(value):
            raise InvalidInput(f"label {key}={value} is not allowed")


def _check_capacity(cap: pb.Resources) -> None:
    if cap.cpus < 0 or cap.memory_bytes < 0 or cap.gpus < 0 or cap.cpus != cap.cpus:
        raise InvalidInput("capacity cannot be negative")
    if cap.disk_bytes < 0:
        raise InvalidInput("the per-task disk cannot be negative")
    if cap.cpus > 4096 or cap.memory_bytes > 64 * 1024**4 or cap.gpus > 64 or cap.disk_bytes > 1024**5:
        raise InvalidInput("capacity is not a sane amount")


def validate_facts(facts: pb.MachineFacts) -> None:
    """What a worker says about its machine; the first problem found raises InvalidInput."""
    _check_text(facts.hostname, "the hostname", 255)
    if not 0 <= facts.cpu_cores <= 4096:
        raise InvalidInput(f"cpu_cores {facts.cpu_cores} is not a sane number")
    if not 0 <= facts.memory_bytes <= 64 * 1024**4:
        raise InvalidInput("memory_bytes is not a sane number")
    if facts.disk_free_bytes < 0:
        raise InvalidInput("disk_free_bytes cannot be negative")
    _check_gpus(facts.gpus)
    if len(facts.executors) > 8 or any(len(e) > 32 for e in facts.executors):
        raise InvalidInput("too many executors, or an executor name too long")
    _check_worker_labels(facts.labels)
    _check_capacity(facts.capacity)
    _check_text(facts.version, "the version", 100)
    _check_text(facts.platform, "the platform", 200)
    _check_runtimes(facts)


def _check_runtimes(facts: pb.MachineFacts) -> None:
    """The Python versions and images a worker offers (what placement matches tasks against)."""
    if len(facts.python_versions) > 32 or len(facts.images) > 256:
        raise InvalidInput("too many Python versions or images")
    for version in facts.python_versions:
        if not re.match(r"^3\.\d{1,2}$", version):
            raise InvalidInput(f"{version[:20]!r} is not a Python minor version such as 3.11")
    for image in facts.images:
        _check_text(image, "an image name", 255)


class WorkerGatewayService(pb_grpc.WorkerGatewayServicer):
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.store = pool.store
        self.book = pool.book

    def _entry(self, worker_id: str) -> tuple[sqlite3.Row, WorkerEntry]:
        row = self.store.get_worker(worker_id)
        if row is None:
            raise Unauthenticated("this worker is no longer registered")
        entry = self.pool.fleet.get(worker_id)
        if entry is None:
            entry = WorkerEntry.from_row(row)
            self.pool.fleet.add(entry)
        return row, entry

    @unary
    async def Register(
        self,
        request: pb.RegisterRequest,
        context: grpc.aio.ServicerContext[pb.RegisterRequest, pb.RegisterResponse],
    ) -> pb.RegisterResponse:
        if not request.join_token or len(request.join_token) > 200:
            raise Unauthenticated(
                "a join token is needed to register (`hivemind-nodepool join-token create`)"
            )
        token = self.store.get_join_token_by_hash(auth.hash_secret(request.join_token))
        if token is None:
            raise Unauthenticated("unknown join token")
        if token["revoked"]:
            raise Unauthenticated("this join token was revoked; ask the admin for a new one")
        if token["expires_at"] < time.time():
            raise Unauthenticated("this join token has expired; ask the admin for a new one")
        validate_facts(request.facts)
        name = request.name or request.facts.hostname or "worker"
        _check_text(name, "the worker name", 128)
        credential = auth.new_token("hmw")
        rejoined = await self._rejoin(request, name, credential, token["id"])
        if rejoined is not None:
            return pb.RegisterResponse(worker_id=rejoined, credential=credential)
        worker_id = "w-" + secrets.token_hex(6)
        await self.store.add_worker(
            worker_id,
            name,
            auth.hash_secret(credential),
            token["id"],
            request.facts.SerializeToString(),
            pb.WORKER_OFFLINE,
        )
        log.info("worker %s registered as %s with join token %s", name, worker_id, token["id"])
        return pb.RegisterResponse(worker_id=worker_id, credential=credential)

    async def _rejoin(
        self, request: pb.RegisterRequest, name: str, credential: str, token_id: str
    ) -> str | None:
        """The worker's id when it proves it is a worker this pool knows (the same state dir,
        reached under another address): it keeps its id, with a new credential. None: a new one."""
        if not request.rejoin_worker_id or len(request.rejoin_worker_id) > 64:
            return None
        row = self.store.get_worker(request.rejoin_worker_id)
        if row is None or not proof_matches(row["credential_hash"], request.join_token, request.rejoin_proof):
            return None  # removed meanwhile, or not that worker's: it joins as a new one
        if row["revoked_at"]:
            return None  # a revoked worker stays revoked; with a valid join token it is a new worker
        worker_id = str(row["id"])
        entry = self.pool.fleet.get(worker_id)
        if entry is not None and entry.connected:
            raise Conflict(
                f"worker {row['name']} ({worker_id}) is connected already: is another worker running "
                "with this state dir? Give each worker its own --state-dir"
            )
        await self.store.rejoin_worker(
            worker_id,
            name,
            auth.hash_secret(credential),
            token_id,
            request.facts.SerializeToString(),
            pb.WORKER_OFFLINE,
        )
        if entry is not None:
            entry.name = name
        log.info("worker %s (%s) joined again as itself with join token %s", name, worker_id, token_id)
        return worker_id

    @stream
    async def Connect(
        self,
        request_iterator: AsyncIterator[pb.WorkerMessage],
        context: grpc.aio.ServicerContext[pb.WorkerMessage, pb.PoolMessage],
    ) -> AsyncIterator[pb.PoolMessage]:
        principal = auth.current_worker()
        parts = request_iterator.__aiter__()
        try:
            first = await within(parts.__anext__(), HELLO_TIMEOUT)
        except (StopAsyncIteration, TimeoutError):
            raise InvalidInput("a worker's Connect stream starts with a Hello") from None
        if first.WhichOneof("body") != "hello":
            raise InvalidInput("a worker's Connect stream starts with a Hello")
        hello = first.hello
        validate_facts(hello.facts)
        row, entry = self._entry(principal.name)
        if row["revoked_at"] or entry.state == pb.WORKER_REVOKED:  # revoked since it authenticated
            raise Unauthenticated(auth.WORKER_REVOKED)
        entry.facts = hello.facts
        entry.state = pb.WORKER_ONLINE
        session, outbox = self.pool.fleet.attach(entry)
        reader: asyncio.Task[None] | None = None
        try:
            self.store.update_worker(
                entry.worker_id,
                state=pb.WORKER_ONLINE,
                facts=hello.facts.SerializeToString(),
                last_heartbeat_at=entry.last_heartbeat_at,
            )
            log.info("worker %s connected (session %d, running %d)", entry.name, session, len(hello.running))
            # Before anything awaits: the scheduler must see what the worker still runs (its
            # messages wait in the outbox, so the Welcome still goes first).
            await self._reconcile_hello(entry, hello.running)
            settings = self.pool.settings
            yield pb.PoolMessage(
                welcome=pb.Welcome(
                    worker_id=entry.worker_id,
                    heartbeat_interval_seconds=settings.heartbeat_interval,
                    heartbeat_timeout_seconds=settings.heartbeat_timeout,
                    max_result_bytes=settings.max_result_size,  # so a worker refuses a bigger one itself
                    lease_seconds=settings.lease,
                )
            )
            reader = asyncio.create_task(self._read(parts, entry, session, outbox))
            while True:
                message = await outbox.get()
                if message is None:
                    break
                yield message
        finally:
            if reader is not None:
                reader.cancel()
            self._closed(entry, session)
        self.book.wake.set()
        if entry.state == pb.WORKER_REVOKED:  # ended by a revocation: say so, the worker must stop
            raise Unauthenticated(auth.WORKER_REVOKED)

    def _closed(self, entry: WorkerEntry, session: int) -> None:
        """A Connect stream ended. When it was the worker's current one and the pool did not end it
        (shutdown, declared lost, replaced by a newer stream), the worker went away: OFFLINE now."""
        current = self.pool.fleet.detach(entry, session)
        went_away = current and not self.pool.stopping and entry.present
        if went_away:
            self.pool.fleet.gone(entry)
            self.store.update_worker(
                entry.worker_id, state=pb.WORKER_OFFLINE, last_heartbeat_at=entry.last_heartbeat_at
            )
            self.book.wake.set()
        log.info(
            "worker %s stream closed (session %d)%s",
            entry.name,
            session,
            f"; offline, holding {len(entry.allocations)} attempt(s) for its return" if went_away else "",
        )

    async def _reconcile_hello(self, entry: WorkerEntry, running: Iterable[pb.RunningAttempt]) -> None:
        """After (re)connecting: keep what is still current, cancel what is stale, resend what the
        worker never got, requeue what it lost."""
        reported: set[AttemptKey] = set()
        for item in running:
            row = self.store.get_task(item.task_id)
            key = (item.task_id, item.attempt)
            reported.add(key)
            if (
                row is not None
                and row["worker_id"] == entry.worker_id
                and row["attempt"] == item.attempt
                and row["state"] in ON_WORKER_STATES
            ):
                entry.allocations[key] = amount_of(row)
                continue
            if row is not None:
                # A stale attempt still running there (a lost worker that came back) uses its
                # resources until the worker stops listing it: count them, so nothing new is
                # placed on top of it before the cancel lands.
                entry.allocations[key] = amount_of(row)
                entry.zombies.add(key)
            entry.send(
                pb.PoolMessage(
                    cancel=pb.CancelOrder(
                        task_id=item.task_id,
                        attempt=item.attempt,
                        reason="stale attempt: the task was moved or ended",
                    )
                )
            )
        entry.reported = reported
        for row in self.store.tasks_in_states(ON_WORKER_STATES):
            if row["worker_id"] != entry.worker_id or (row["id"], row["attempt"]) in reported:
                continue
            if row["state"] == pb.ASSIGNED:
                entry.allocations[(row["id"], row["attempt"])] = amount_of(row)
                entry.send(pb.PoolMessage(assignment=self.book.assignment_for(row)))
            else:
                entry.allocations.pop((row["id"], row["attempt"]), None)
                await self.book.requeue(
                    row, f"worker {entry.name} restarted without attempt {row['attempt']}", spend_retry=True
                )

    async def _read(
        self,
        parts: AsyncIterator[pb.WorkerMessage],
        entry: WorkerEntry,
        session: int,
        outbox: asyncio.Queue[pb.PoolMessage | None],
    ) -> None:
        persisted = time.monotonic()
        try:
            async for message in parts:
                if entry.session != session:
                    break
                if message.WhichOneof("body") != "heartbeat":
                    continue  # a second Hello is ignored
                beat = message.heartbeat
                if beat.HasField("env_cache"):
                    entry.env_cache = beat.env_cache
                entry.last_seen = time.monotonic()
                entry.last_heartbeat_at = time.time()
                if entry.state in (pb.WORKER_LOST, pb.WORKER_REVOKED):
                    break  # declared lost meanwhile (it must reconnect with a Hello), or revoked
                if beat.draining and entry.state != pb.WORKER_DRAINING:
                    entry.state = pb.WORKER_DRAINING
                    self.store.update_worker(entry.worker_id, state=pb.WORKER_DRAINING)
                    log.info("worker %s is draining", entry.name)
                for task_id, attempt in entry.reconcile(
                    {(r.task_id, r.attempt) for r in beat.running[:1000]}
                ):
                    entry.send(
                        pb.PoolMessage(
                            cancel=pb.CancelOrder(
                                task_id=task_id,
                                attempt=attempt,
                                reason="stale attempt: the task was moved or ended",
                            )
                        )
                    )
                if time.monotonic() - persisted > PERSIST_HEARTBEAT_EVERY:
                    persisted = time.monotonic()
                    self.store.update_worker(entry.worker_id, last_heartbeat_at=entry.last_heartbeat_at)
                entry.send(pb.PoolMessage(ack=pb.Heartbeat(seq=beat.seq)))  # extends its lease
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("reading worker %s's stream failed", entry.name)
        if entry.session == session:
            outbox.put_nowait(None)

    @stream
    async def FetchBundle(
        self, request: pb.AttemptRef, context: grpc.aio.ServicerContext[pb.AttemptRef, pb.Chunk]
    ) -> AsyncIterator[pb.Chunk]:
        worker = auth.current_worker()
        row = self.book.check_attempt(worker.name, request.task_id, request.attempt)
        what = f"the bundle of task {row['id']}"
        rate = self.pool.settings.bundle_rate_limit
        # Paced when limited: about a quarter second of the allowed rate per chunk, each on schedule.
        size = max(4096, min(CHUNK_SIZE, rate // 4)) if rate else CHUNK_SIZE
        began, sent = time.monotonic(), 0
        for block in self.pool.blobs.read_chunks(row["bundle_sha256"], size, what):
            entry = self.pool.fleet.get(worker.name)
            if entry is not None and entry.state == pb.WORKER_REVOKED:  # revoked mid-download
                raise Unauthenticated(auth.WORKER_REVOKED)
            ahead = began + sent / rate - time.monotonic() if rate else 0.0
            if ahead > 0:
                await asyncio.sleep(ahead)
            yield pb.Chunk(data=block)
            sent += len(block)

    @unary
    async def ReportStatus(
        self, request: pb.StatusReport, context: grpc.aio.ServicerContext[pb.StatusReport, pb.Empty]
    ) -> pb.Empty:
        worker = auth.current_worker()
        if request.state not in (pb.PREPARING, pb.RUNNING, pb.UPLOADING):
            raise InvalidInput(
                "a status report's state is PREPARING, RUNNING or UPLOADING; outcomes go with UploadResult"
            )
        _check_text(request.message.replace("\n", " ").replace("\t", " "), "the message", 2000)
        if (
            request.progress.cells_done < 0
            or request.progress.cells_total < 0
            or request.progress.cells_done > max(request.progress.cells_total, 0)
            or request.progress.cells_total > 1_000_000
        ):
            raise InvalidInput("progress must satisfy 0 <= cells_done <= cells_total")
        self.book.check_attempt(worker.name, request.task_id, request.attempt)  # fail fast when stale
        progress = request.progress if request.HasField("progress") else None
        await self.book.report_state(
            worker.name, request.task_id, request.attempt, request.state, request.message, progress
        )
        return pb.Empty()

    @unary
    async def ReportEvents(
        self, request: pb.EventBatch, context: grpc.aio.ServicerContext[pb.EventBatch, pb.EventAck]
    ) -> pb.EventAck:
        worker = auth.current_worker()
        if len(request.events) > MAX_BATCH:
            raise InvalidInput(f"at most {MAX_BATCH} events per batch")
        for event in request.events:
            if event.seq < 1:
                raise InvalidInput("number events from 1 within the attempt")
            if event.kind not in EVENT_KINDS:
                raise InvalidInput(
                    "workers send STDOUT, STDERR, DISPLAY, PROGRESS, NOTICE or PHASE events; "
                    "state changes go with ReportStatus"
                )
            if len(event.text) > MAX_TEXT or len(event.data_json) > MAX_DATA_JSON:
                raise InvalidInput("an event is too large; split long output")
        self.book.check_attempt(worker.name, request.task_id, request.attempt)  # fail fast when stale
        self.pool.disk.require_space()  # live events wait in the worker while the disk is full
        acked = await self.book.record_events(
            worker.name, request.task_id, request.attempt, list(request.events)
        )
        return pb.EventAck(acked=acked)

    @unary
    async def UploadResult(
        self,
        request_iterator: AsyncIterator[pb.UploadResultRequest],
        context: grpc.aio.ServicerContext[pb.UploadResultRequest, pb.Task],
    ) -> pb.Task:
        worker = auth.current_worker()
        parts = request_iterator.__aiter__()
        first = await receive_head(
            parts,
            "header",
            "an upload starts with its header",
            "an upload starts with its header, then the result's chunks, then its sha256",
        )
        header = first.header
        if not header.requeue and header.outcome not in OUTCOMES:
            raise InvalidInput("the outcome is SUCCEEDED, FAILED, CANCELLED or TIMED_OUT (or set requeue)")
        self.book.check_upload(worker.name, header)
        limit = self.pool.settings.max_result_size
        writer = self.pool.blobs.writer(limit)
        sha = ""
        try:
            refusal = ""
            try:
                claimed = await receive_chunks(parts, writer, "an upload", "header")
            except TooLarge:
                claimed, refusal = "", f"it is larger than the pool's result limit of {format_size(limit)}"
            result: tuple[str, int] | None = None
            if not refusal and (claimed or writer.size):
                await writer.verify(claimed)
                sha = writer.sha256
                self.pool.collector.in_flight.add(sha)
                try:
                    await asyncio.to_thread(check_archive, writer.tmp_path)
                except BundleError as exc:
                    refusal = str(exc)
            if refusal:
                writer.abort()
                await self._refuse(worker.name, header, refusal)
            if claimed or writer.size:
                # The task may have been cancelled or moved while the bytes came in.
                self.book.check_upload(worker.name, header)
                await writer.finish()
                result = (sha, writer.size)
            else:
                writer.abort()  # an empty result: nothing to keep
            self.book.check_upload(worker.name, header)
            final = await self.book.finish(worker.name, header, result)
        except BaseException:
            writer.abort()
            raise
        finally:
            self.pool.collector.in_flight.discard(sha)
        log.info(
            "task %s attempt %d ended %s on %s",
            header.task_id,
            header.attempt,
            "requeued" if header.requeue else pb.TaskState.Name(header.outcome),
            worker.name,
        )
        from hivemind_nodepool.pool import views

        return views.task(final, self.store.timeline(final["id"]))

    async def _refuse(self, worker_id: str, header: pb.ResultHeader, reason: str) -> NoReturn:
        """A result the pool will not keep, for a reason no retry can change: the attempt's task
        ends now (FAILED when it had succeeded; a failure or timeout keeps its state, with the
        refusal added to its error) instead of waiting for the backstop, and the worker is told
        with ResultRefused, which it does not retry. A cancelled task's result so far is only
        refused: the task has ended already."""
        message = f"the result was refused: {reason}"
        log.warning("task %s attempt %d: %s", header.task_id, header.attempt, message)
        row = self.book.require_task(header.task_id)
        if not header.requeue and not is_partial_result(row, worker_id, header):
            ended = pb.ResultHeader()
            ended.CopyFrom(header)
            if header.outcome == pb.SUCCEEDED:
                ended.outcome = pb.FAILED
            ended.error = message + (f"\n{header.error}" if header.error else "")
            await self.book.finish(worker_id, ended, None)
        raise ResultRefused(message)
