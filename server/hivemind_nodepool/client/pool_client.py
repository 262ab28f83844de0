"""PoolClient: the one typed client of the NodePool, used by the CLIs, the worker and Jupyter.

Nobody else builds raw stubs. Every failed call, and every broken stream, raises a `HiveMindError`
subclass (see protocol/errors.py), never a bare `grpc.RpcError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, ParamSpec, TypeVar, cast

import grpc

from hivemind_nodepool.client import credentials as credentials_file
from hivemind_nodepool.client.channel import create_channel
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.proto import nodepool_pb2_grpc as pb_grpc
from hivemind_nodepool.protocol.errors import PoolUnavailable, from_rpc_error
from hivemind_nodepool.protocol.rejoin import rejoin_proof
from hivemind_nodepool.protocol.states import TERMINAL_STATES
from hivemind_nodepool.protocol.wire import CHUNK_SIZE

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_TIMEOUT = 30.0
RESUME_PAUSE = 0.5  # seconds between attempts to resume a stream while the pool is away


class WorkerStream:
    """The worker's open Connect stream. Iterating yields PoolMessages; when the stream breaks it
    raises the matching HiveMindError (Cancelled once `cancel()` closed it), never a grpc.RpcError."""

    def __init__(self, call: grpc.CallIterator[pb.PoolMessage], address: str) -> None:
        self._call = call
        self._messages = iter(call)
        self._address = address

    def __iter__(self) -> WorkerStream:
        return self

    def __next__(self) -> pb.PoolMessage:
        try:
            return next(self._messages)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self._address) from None

    def cancel(self) -> bool:
        """Close the stream from this side; the reader then gets Cancelled."""
        return bool(self._call.cancel())


class PoolClient:
    """A connection to one pool, optionally signed in with a user token or a worker credential."""

    def __init__(
        self,
        address: str,
        token: str | None = None,
        ca_file: str | Path | None = None,
        insecure: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.address = address
        self.token = token
        self.timeout = timeout
        self._channel = create_channel(address, ca_file=ca_file, insecure=insecure)
        self._pool = pb_grpc.NodePoolStub(self._channel)
        self._gateway = pb_grpc.WorkerGatewayStub(self._channel)

    @classmethod
    def from_saved_credential(cls, directory: Path | None = None) -> PoolClient:
        """A client for the pool the user signed in to with `hivemind login`."""
        saved = credentials_file.require(directory)
        return cls(saved.pool, token=saved.token, ca_file=saved.ca_file, insecure=saved.insecure)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> PoolClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------------

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def _unary(self, method: Callable[..., R], request: object, timeout: float | None = None) -> R:
        try:
            return method(request, metadata=self._metadata(), timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.address) from None

    def _stream(
        self, method: Callable[..., Iterable[R]], request: object, timeout: float | None = None
    ) -> Iterator[R]:
        try:
            yield from method(request, metadata=self._metadata(), timeout=timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.address) from None

    def _pause_to_resume(self, exc: grpc.RpcError, down_since: float | None, reconnect_for: float) -> float:
        """For a broken stream: while the pool has been away for less than reconnect_for, wait a
        moment and return since when it is away, so the caller resumes; otherwise raise the error."""
        error = from_rpc_error(exc, self.address)
        if not isinstance(error, PoolUnavailable):
            raise error from None
        since = down_since or time.monotonic()
        if time.monotonic() - since > reconnect_for:
            raise error from None
        time.sleep(RESUME_PAUSE)
        return since

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the channel connects, or raise PoolUnavailable."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise PoolUnavailable(
                f"cannot reach the HiveMind pool at {self.address} within {timeout:.0f}s. "
                "Check that `hivemind-nodepool serve` is running and the address is right."
            ) from None

    # -- users ----------------------------------------------------------------------------------

    def login(self, username: str, password: str, ttl_seconds: int = 0) -> pb.LoginResponse:
        """Sign in; the client uses the new token from now on."""
        answer = self._unary(
            self._pool.Login, pb.LoginRequest(username=username, password=password, ttl_seconds=ttl_seconds)
        )
        self.token = answer.token
        return answer

    def logout(self) -> None:
        self._unary(self._pool.Logout, pb.Empty())
        self.token = None

    def whoami(self) -> pb.User:
        return self._unary(self._pool.WhoAmI, pb.Empty())

    # -- tasks ----------------------------------------------------------------------------------

    def submit(
        self,
        manifest: pb.Manifest,
        bundle: str | Path | BinaryIO,
        chunk_size: int = CHUNK_SIZE,
        on_progress: Callable[[int], None] | None = None,
    ) -> pb.Task:
        """Stream a bundle ZIP with its manifest; the answer is the accepted (durable) task."""
        with _reading(bundle) as handle:
            parts = _upload(pb.SubmitRequest(manifest=manifest), handle, chunk_size, on_progress)
            return self._unary(self._pool.SubmitTask, parts, timeout=3600)

    def get_task(self, task_id: str) -> pb.Task:
        return self._unary(self._pool.GetTask, pb.TaskRef(task_id=task_id))

    def list_tasks(
        self, states: Iterable[int] = (), page_size: int = 0, page_token: str = "", all_users: bool = False
    ) -> pb.ListTasksResponse:
        wanted = cast("list[pb.TaskState.ValueType]", list(states))
        return self._unary(
            self._pool.ListTasks,
            pb.ListTasksRequest(
                states=wanted, page_size=page_size, page_token=page_token, all_users=all_users
            ),
        )

    def iter_tasks(self, states: Iterable[int] = (), all_users: bool = False) -> Iterator[pb.Task]:
        """Every matching task, newest first, following pages."""
        token = ""
        wanted = list(states)
        while True:
            page = self.list_tasks(wanted, page_size=500, page_token=token, all_users=all_users)
            yield from page.tasks
            token = page.next_page_token
            if not token:
                return

    def cancel_task(self, task_id: str) -> pb.Task:
        return self._unary(self._pool.CancelTask, pb.TaskRef(task_id=task_id))

    def retry_task(self, task_id: str) -> pb.Task:
        return self._unary(self._pool.RetryTask, pb.TaskRef(task_id=task_id))

    def watch(
        self, task_id: str, after_seq: int = 0, follow: bool = True, reconnect_for: float = 60.0
    ) -> Iterator[pb.TaskEvent]:
        """A task's events from after_seq on, in order, each once.

        With follow the stream lasts until the task ends. When the pool goes away, the watch
        reconnects from the last event it yielded for up to `reconnect_for` seconds.
        """
        last = after_seq
        down_since: float | None = None
        while True:
            try:
                stream = self._pool.WatchTask(
                    pb.WatchRequest(task_id=task_id, after_seq=last, follow=follow), metadata=self._metadata()
                )
                for event in stream:
                    down_since = None
                    if event.seq and event.seq <= last:
                        continue  # never yield an event twice
                    if event.seq:
                        last = event.seq
                    yield event
                return
            except grpc.RpcError as exc:
                down_since = self._pause_to_resume(exc, down_since, reconnect_for)
                log.info("watch of %s interrupted; resuming after event %d", task_id, last)

    def watch_tasks(
        self, all_users: bool = False, reconnect_for: float = 60.0
    ) -> Iterator[pb.TaskFeedMessage]:
        """Your tasks as they change, pushed by the pool (every user's with all_users: admins).

        Each (re)connection starts with a `ready` message: read the task list after it (ListTasks)
        and apply the `task` messages that follow; a `resync` asks for the same. When the pool goes
        away the iterator reconnects for up to `reconnect_for` seconds, then raises PoolUnavailable;
        other errors are raised at once. Closing the client ends it with `Cancelled`.
        """
        down_since: float | None = None
        while True:
            call = self._pool.WatchTasks(pb.WatchTasksRequest(all_users=all_users), metadata=self._metadata())
            try:
                for message in call:
                    down_since = None
                    yield message
                return
            except grpc.RpcError as exc:
                down_since = self._pause_to_resume(exc, down_since, reconnect_for)
                log.info("task feed interrupted; reconnecting")
            finally:
                call.cancel()

    def wait(self, task_id: str, timeout: float | None = None) -> pb.Task:
        """Block until the task ends; return it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for event in self.watch(task_id, follow=True):
            if event.kind == pb.TaskEvent.STATE and event.state in TERMINAL_STATES:
                break
            if deadline is not None and time.monotonic() > deadline:
                break
        return self.get_task(task_id)

    def fetch_result(self, task_id: str, destination: str | Path) -> Path:
        """Download the task's result ZIP to destination (written whole, then renamed)."""
        chunks = self._stream(self._pool.FetchResult, pb.TaskRef(task_id=task_id))
        return _download(chunks, Path(destination), ".part")

    # -- the pool -------------------------------------------------------------------------------

    def list_workers(self) -> list[pb.Worker]:
        return list(self._unary(self._pool.ListWorkers, pb.Empty()).workers)

    def pool_status(self) -> pb.PoolStatus:
        return self._unary(self._pool.GetPoolStatus, pb.Empty())

    # -- admin ----------------------------------------------------------------------------------

    def create_user(self, name: str, password: str, admin: bool = False) -> pb.User:
        return self._unary(
            self._pool.CreateUser, pb.CreateUserRequest(name=name, password=password, admin=admin)
        )

    def list_users(self) -> list[pb.User]:
        return list(self._unary(self._pool.ListUsers, pb.Empty()).users)

    def disable_user(self, name: str, keep_tasks: bool = False) -> pb.User:
        """Disable an account: its tokens and open streams end; its unfinished tasks are
        cancelled unless keep_tasks."""
        return self._unary(self._pool.DisableUser, pb.DisableUserRequest(name=name, keep_tasks=keep_tasks))

    def create_join_token(self, ttl_seconds: int = 0) -> pb.JoinToken:
        return self._unary(self._pool.CreateJoinToken, pb.CreateJoinTokenRequest(ttl_seconds=ttl_seconds))

    def list_join_tokens(self) -> list[pb.JoinToken]:
        return list(self._unary(self._pool.ListJoinTokens, pb.Empty()).tokens)

    def revoke_join_token(self, token_id: str, workers: bool = False) -> pb.JoinToken:
        """Revoke a join token; with workers, also every worker that joined with it."""
        return self._unary(
            self._pool.RevokeJoinToken, pb.RevokeJoinTokenRequest(id=token_id, workers=workers)
        )

    def drain_worker(self, worker_id: str) -> pb.Worker:
        return self._unary(self._pool.DrainWorker, pb.WorkerRef(worker_id=worker_id))

    def revoke_worker(self, worker_id: str) -> pb.Worker:
        return self._unary(self._pool.RevokeWorker, pb.WorkerRef(worker_id=worker_id))

    def remove_worker(self, worker_id: str) -> pb.Worker:
        """Forget an offline worker; Conflict while it is online or holds tasks."""
        return self._unary(self._pool.RemoveWorker, pb.WorkerRef(worker_id=worker_id))

    # -- the worker's side ----------------------------------------------------------------------

    def register_worker(
        self,
        join_token: str,
        name: str,
        facts: pb.MachineFacts,
        previous: tuple[str, str] | None = None,
    ) -> pb.RegisterResponse:
        """Join the pool; the client uses the worker's new credential from now on. `previous`, the
        (worker id, credential) of an identity the worker holds, asks to join again as that
        worker: only a proof bound to the join token is sent, never the credential."""
        request = pb.RegisterRequest(join_token=join_token, name=name, facts=facts)
        if previous is not None:
            request.rejoin_worker_id = previous[0]
            request.rejoin_proof = rejoin_proof(previous[1], join_token)
        answer = self._unary(self._gateway.Register, request)
        self.token = answer.credential
        return answer

    def connect(self, messages: Iterator[pb.WorkerMessage]) -> WorkerStream:
        """Open the worker's Connect stream: iterate it for PoolMessages; `.cancel()` closes it."""
        # Opening a stream never fails by itself: a pool that is away shows on the first read.
        return WorkerStream(self._gateway.Connect(messages, metadata=self._metadata()), self.address)

    def fetch_bundle(self, task_id: str, attempt: int, destination: str | Path) -> Path:
        """Download an attempt's bundle to destination (written whole, then renamed)."""
        chunks = self._stream(self._gateway.FetchBundle, pb.AttemptRef(task_id=task_id, attempt=attempt))
        return _download(chunks, Path(destination), f".{attempt}.part")

    def report_status(self, report: pb.StatusReport) -> None:
        self._unary(self._gateway.ReportStatus, report)

    def report_events(self, batch: pb.EventBatch) -> int:
        """Send numbered events; returns the highest number the pool has stored."""
        return self._unary(self._gateway.ReportEvents, batch).acked

    def upload_result(
        self, header: pb.ResultHeader, result: str | Path | None, chunk_size: int = CHUNK_SIZE
    ) -> pb.Task:
        """Send an attempt's outcome and, when there is one, its result ZIP."""
        with _reading(result) as handle:
            parts = _upload(pb.UploadResultRequest(header=header), handle, chunk_size)
            return self._unary(self._gateway.UploadResult, parts, timeout=3600)


# -- both uploads and both downloads share one shape ------------------------------------------------

Part = TypeVar("Part", pb.SubmitRequest, pb.UploadResultRequest)


@contextlib.contextmanager
def _reading(source: str | Path | BinaryIO | None) -> Iterator[BinaryIO | None]:
    """An open file for a path (closed afterwards); a file object or None as given."""
    if isinstance(source, (str, Path)):
        with open(source, "rb") as handle:
            yield handle
    else:
        yield source


def _upload(
    head: Part, handle: BinaryIO | None, chunk_size: int, on_progress: Callable[[int], None] | None = None
) -> Iterator[Part]:
    """The parts of a client-streamed upload: head, the file in chunks, its sha256 (empty, with no
    chunks, when there is no file), each a message of head's type. on_progress hears the bytes
    sent so far."""
    kind = type(head)
    yield head
    if handle is None:
        yield kind(sha256="")
        return
    digest = hashlib.sha256()
    sent = 0
    while block := handle.read(chunk_size):
        digest.update(block)
        sent += len(block)
        if on_progress:
            on_progress(sent)
        yield kind(chunk=block)
    yield kind(sha256=digest.hexdigest())


def _download(chunks: Iterable[pb.Chunk], target: Path, suffix: str) -> Path:
    """Write a streamed file beside target (name + suffix), then rename it into place, so target
    is either missing or whole."""
    partial = target.with_name(target.name + suffix)
    with open(partial, "wb") as handle:
        for chunk in chunks:
            handle.write(chunk.data)
    partial.replace(target)
    return target


__all__ = ["PoolClient", "WorkerStream"]
