"""The WebSocket fan-out: one shared task feed and one event watcher per task, many sockets.

However many browser tabs are open, the server holds one WatchTasks stream to the pool (only while
a socket is open) and copies each pushed task change to every socket; it reads the task list only
after (re)connecting. Each subscribed task's events come from a single WatchTask stream whose
events are copied to every subscribed socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol, cast

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import ws_authenticated
from jupyter_server.base.handlers import JupyterHandler
from tornado import web, websocket

from hivemind_nodepool.client import PoolClient
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.errors import (
    Cancelled,
    HiveMindError,
    PermissionDenied,
    PoolUnavailable,
    Unauthenticated,
    http_status,
)
from hivemind_nodepool.protocol.jsonify import to_dict
from hivemind_nodepool.protocol.states import UNFINISHED_STATES

from .handlers.base import AUTH_RESOURCE, INT64_MAX
from .handlers.tasks import TASK_ID
from .pool import PoolConnector

log = logging.getLogger(__name__)

RESYNC_PAGE = 100  # newest tasks read after the feed (re)connects
MAX_KNOWN = 5000  # tasks whose last sent state is remembered (to send only changes)
RECONNECT_FOR = 30.0  # seconds the stream retries by itself before the feed starts it again
RETRY_DELAY = 2.0
CREDENTIAL_CHECK = 2.0  # seconds between local reads of the credential file
MAX_BUFFERED_EVENTS = 20_000
MAX_SUBSCRIPTIONS = 200
MAX_MESSAGE_BYTES = 64 * 1024
REFUSED_CLOSE_CODE = 4401  # the pool refused the sign-in (revoked, expired, disabled account)


class Socket(Protocol):
    def send(self, message: dict[str, Any]) -> None: ...

    def drop(self, code: int, reason: str) -> None:
        """Close the socket from the server's side."""


def _change_key(task: pb.Task) -> tuple[Any, ...]:
    return (
        task.state,
        task.updated_at,
        task.progress.cells_done,
        task.progress.cells_total,
        task.worker_id,
        task.pending_reason,
        task.attempt,
        task.last_event_seq,
    )


class EventWatcher:
    """Follows one task's events in a thread and hands each to the subscribed sockets, in order."""

    def __init__(
        self,
        task_id: str,
        client: PoolClient,
        loop: asyncio.AbstractEventLoop,
        on_idle: Callable[[EventWatcher], None],
    ) -> None:
        self.task_id = task_id
        self.client = client
        self.loop = loop
        self.on_idle = on_idle
        self.events: list[tuple[int, dict[str, Any]]] = []
        self.subscribers: dict[Socket, int] = {}
        self.finished = False
        self.error: dict[str, Any] | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"hivemind-watch-{task_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        error: dict[str, Any] | None = None
        try:
            for event in self.client.watch(self.task_id, after_seq=0, follow=True):
                if self._stopped.is_set():
                    return
                self.loop.call_soon_threadsafe(
                    self._deliver, int(event.seq), to_dict(event, every_field=True)
                )
        except Cancelled:
            return  # stopped by closing the client
        except HiveMindError as exc:
            if not self._stopped.is_set():
                status = http_status(exc)
                message = (
                    f"no task {self.task_id} (it does not exist or is not yours)"
                    if status in (403, 404)
                    else str(exc)
                )
                error = {
                    "type": "error",
                    "task_id": self.task_id,
                    "error": message,
                    "status": 404 if status == 403 else status,
                }
        except Exception as exc:  # a thread must not die silently
            log.exception("watching %s failed", self.task_id)
            error = {"type": "error", "task_id": self.task_id, "error": str(exc), "status": 502}
        finally:
            self.client.close()
        if not self._stopped.is_set():
            self.loop.call_soon_threadsafe(self._finish, error)

    def _deliver(self, seq: int, event: dict[str, Any]) -> None:
        self.events.append((seq, event))
        if len(self.events) > MAX_BUFFERED_EVENTS:
            del self.events[: len(self.events) - MAX_BUFFERED_EVENTS]
        for socket, after in list(self.subscribers.items()):
            if seq > after:
                self.subscribers[socket] = seq
                socket.send({"type": "event", "task_id": self.task_id, "event": event})

    def _finish(self, error: dict[str, Any] | None) -> None:
        self.finished = True
        self.error = error
        if error is not None:
            for socket in list(self.subscribers):
                socket.send(error)
            self.subscribers.clear()
        if not self.subscribers:
            self.on_idle(self)

    def add(self, socket: Socket, after: int) -> None:
        if self.error is not None:
            socket.send(self.error)
            return
        if self.events and after < self.events[0][0] - 1:
            socket.send(
                {
                    "type": "error",
                    "task_id": self.task_id,
                    "status": 400,
                    "error": f"events up to {self.events[0][0] - 1} are no longer buffered; "
                    "read them with GET /hivemind/api/tasks/{id}/events",
                }
            )
        last = after
        for seq, event in self.events:
            if seq > last:
                socket.send({"type": "event", "task_id": self.task_id, "event": event})
                last = seq
        self.subscribers[socket] = last

    def remove(self, socket: Socket) -> None:
        self.subscribers.pop(socket, None)
        if not self.subscribers:
            self.on_idle(self)

    def stop(self) -> None:
        self._stopped.set()
        self.client.close()


class PoolFollower:
    """One WatchTasks stream read in a thread; each message is handed to the event loop."""

    def __init__(
        self,
        client: PoolClient,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[PoolFollower, pb.TaskFeedMessage], None],
        on_end: Callable[[PoolFollower, BaseException | None], None],
    ) -> None:
        self.client = client
        self.loop = loop
        self.on_message = on_message
        self.on_end = on_end
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hivemind-task-feed", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            for message in self.client.watch_tasks(reconnect_for=RECONNECT_FOR):
                if self._stopped.is_set():
                    return
                self.loop.call_soon_threadsafe(self.on_message, self, message)
        except Cancelled:
            if self._stopped.is_set():
                return
            error = PoolUnavailable("the task feed was cut off")
        except Exception as exc:  # a thread must not die silently
            error = exc
        finally:
            self.client.close()
        if not self._stopped.is_set():
            self.loop.call_soon_threadsafe(self.on_end, self, error)

    def stop(self) -> None:
        self._stopped.set()
        self.client.close()


class TaskFeed:
    """The server's one view of the user's tasks, shared by every open socket.

    While a socket is open, one WatchTasks stream (for the signed-in credential) brings each change
    of the user's tasks as the pool pushes it, and every socket gets it. After each (re)connection
    the feed reads the task list once and sends what changed while it was away. Signing in or out
    is noticed from the credential file (read locally every few seconds), never by asking the pool.
    """

    def __init__(self, connector: PoolConnector, executor: Executor) -> None:
        self.connector = connector
        self.executor = executor
        self.sockets: set[Socket] = set()
        self.watchers: dict[str, EventWatcher] = {}
        self.resyncs = 0  # task list reads, for tests and diagnostics
        self.pushed = 0  # task changes the pool pushed
        self._known: OrderedDict[str, tuple[Any, ...]] = OrderedDict()
        self._baseline = False  # whether the first list since the sockets opened was read
        self._signed_in: bool | None = None
        self._key: tuple[str, str] | None = None
        self._follower: PoolFollower | None = None
        self._held: list[pb.Task] | None = None  # pushes that arrive while the list is read
        self._again = False
        self._credential_check: asyncio.Task[None] | None = None
        self._retry: asyncio.TimerHandle | None = None

    # -- sockets --------------------------------------------------------------------------------

    def add(self, socket: Socket) -> None:
        self.sockets.add(socket)
        if self._credential_check is None or self._credential_check.done():
            self._credential_check = asyncio.get_running_loop().create_task(self._check_credential())
            self._restart()

    def remove(self, socket: Socket) -> None:
        self.sockets.discard(socket)
        for watcher in list(self.watchers.values()):
            if socket in watcher.subscribers:
                watcher.remove(socket)
        if not self.sockets:
            self._stop_following()
            self._known.clear()
            self._baseline = False

    def subscribe(self, socket: Socket, task_id: str, after: int) -> None:
        watcher = self.watchers.get(task_id)
        if watcher is None:
            try:
                client = self.connector.new_client()
            except HiveMindError as exc:
                socket.send(
                    {"type": "error", "task_id": task_id, "error": str(exc), "status": http_status(exc)}
                )
                return
            watcher = EventWatcher(task_id, client, asyncio.get_running_loop(), self._watcher_idle)
            self.watchers[task_id] = watcher
        watcher.add(socket, after)

    def unsubscribe(self, socket: Socket, task_id: str) -> None:
        watcher = self.watchers.get(task_id)
        if watcher is not None:
            watcher.remove(socket)

    def subscriptions(self, socket: Socket) -> int:
        return sum(1 for w in self.watchers.values() if socket in w.subscribers)

    def _watcher_idle(self, watcher: EventWatcher) -> None:
        if self.watchers.get(watcher.task_id) is watcher and not watcher.subscribers:
            del self.watchers[watcher.task_id]
            watcher.stop()

    def broadcast(self, message: dict[str, Any]) -> None:
        for socket in list(self.sockets):
            socket.send(message)

    def close(self) -> None:
        self._stop_following()
        for watcher in list(self.watchers.values()):
            watcher.stop()
        self.watchers.clear()
        self.sockets.clear()

    # -- the shared pool stream -----------------------------------------------------------------

    def credential_changing(self) -> None:
        """About to sign out or in here: stop the stream first, so the pool refusing the old
        token is not taken for a revocation (which closes the sockets)."""
        self._drop_follower()

    def credential_changed(self) -> None:
        """Signed in or out here (the session handler): follow the new credential now."""
        if self.sockets:
            self._restart()

    def _credential_key(self) -> tuple[str, str] | None:
        saved = self.connector.credential()
        if saved is None or saved.expired:
            return None
        return saved.pool, saved.token

    async def _check_credential(self) -> None:
        """Follow sign-ins and sign-outs made elsewhere (`hivemind login`, `%hivemind login`)."""
        while self.sockets:
            await asyncio.sleep(CREDENTIAL_CHECK)
            try:
                key = self._credential_key()
            except Exception:
                log.exception("reading the HiveMind credential failed")
                continue
            if key != self._key:
                self._restart()

    def _stop_following(self) -> None:
        if self._credential_check is not None:
            self._credential_check.cancel()
            self._credential_check = None
        self._drop_follower()

    def _drop_follower(self) -> None:
        """Stop the pool stream and any pending retry of it."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._follower is not None:
            self._follower.stop()
            self._follower = None

    def _restart(self) -> None:
        self._drop_follower()
        if not self.sockets:
            return
        key = self._credential_key()
        if key != self._key:
            self._known.clear()
            self._baseline = False
        self._key = key
        if key is None:
            self._set_signed_in(False)
            return
        try:
            client = self.connector.new_client()
        except Unauthenticated:
            self._set_signed_in(False)
            return
        except HiveMindError as exc:  # a bad address or CA file: try again later
            log.info("the task feed cannot start: %s", exc)
            self._retry = asyncio.get_running_loop().call_later(RETRY_DELAY * 5, self._restart)
            return
        self._follower = PoolFollower(client, asyncio.get_running_loop(), self._on_message, self._on_end)

    def _on_message(self, follower: PoolFollower, message: pb.TaskFeedMessage) -> None:
        if follower is not self._follower:
            return  # from a stream already replaced
        kind = message.WhichOneof("body")
        if kind == "task":
            self.pushed += 1
            if self._held is not None:
                self._held.append(message.task)
            else:
                self._send(message.task)
        elif kind in ("ready", "resync"):
            self._set_signed_in(True)
            if self._held is not None:
                self._again = True  # a list is being read; read it once more after
            else:
                asyncio.get_running_loop().create_task(self._resync())

    def _on_end(self, follower: PoolFollower, error: BaseException | None) -> None:
        if follower is not self._follower:
            return
        self._follower = None
        if isinstance(error, (Unauthenticated, PermissionDenied)):
            log.info("the task feed was refused (%s); closing the sockets until a new sign-in", error)
            self._drop_sockets(str(error))
            return
        log.info("the task feed ended (%s); trying again in %.0f s", error, RETRY_DELAY)
        self._retry = asyncio.get_running_loop().call_later(RETRY_DELAY, self._restart)

    def _drop_sockets(self, reason: str) -> None:
        """The pool refused the sign-in (revoked, expired, the account disabled): every socket
        is told and closed at once, so none goes on showing the user's tasks or events."""
        self._signed_in = False
        sockets = list(self.sockets)
        for socket in sockets:
            socket.send({"type": "session", "signed_in": False, "reason": reason})
        for socket in sockets:
            self.remove(socket)
            socket.drop(REFUSED_CLOSE_CODE, "the pool refused the sign-in")

    def _set_signed_in(self, signed_in: bool) -> None:
        if signed_in != self._signed_in:
            if self._signed_in is not None:
                self.broadcast({"type": "session", "signed_in": signed_in})
            self._signed_in = signed_in

    def _send(self, task: pb.Task) -> None:
        key = _change_key(task)
        if self._known.get(task.id) == key:
            return
        self._known[task.id] = key
        self._known.move_to_end(task.id)
        while len(self._known) > MAX_KNOWN:
            self._known.popitem(last=False)
        self.broadcast({"type": "task", "task": to_dict(task, every_field=True)})

    def _read_list(self, unfinished: list[str]) -> list[pb.Task]:
        """Blocking: the newest tasks (one ListTasks), and tasks that were unfinished when last seen
        but are not among them (they may have ended meanwhile)."""
        self.resyncs += 1
        client = self.connector.client()
        tasks = list(client.list_tasks(page_size=RESYNC_PAGE).tasks)
        listed = {t.id for t in tasks}
        for task_id in unfinished:
            if task_id not in listed:
                try:
                    tasks.append(client.get_task(task_id))
                except HiveMindError:
                    continue
        return tasks

    async def _resync(self) -> None:
        """Read the list once and send what changed since the sockets last heard; pushes that
        arrive meanwhile are held and sent after it, so nothing older overtakes them."""
        self._held = []
        follower = self._follower
        try:
            while True:
                self._again = False
                unfinished = [i for i, key in self._known.items() if key[0] in UNFINISHED_STATES]
                loop = asyncio.get_running_loop()
                try:
                    tasks = await loop.run_in_executor(self.executor, self._read_list, unfinished)
                except Unauthenticated:
                    self._set_signed_in(False)
                    return
                except HiveMindError as exc:
                    log.info("the task list could not be read: %s", exc)
                    return  # the stream's next ready (after it reconnects) reads it again
                if follower is not self._follower:
                    return
                if self._baseline:
                    for task in tasks:
                        self._send(task)
                else:  # the first look: the panel read the list itself; remember it only
                    for task in tasks:
                        self._known[task.id] = _change_key(task)
                    self._baseline = True
                if not self._again:
                    return
        finally:
            held, self._held = self._held or [], None
            if follower is self._follower:
                for task in held:
                    self._send(task)
            elif self._again and self._follower is not None:
                # A new stream said ready while the old one's list was read: read it for the new.
                asyncio.get_running_loop().create_task(self._resync())


class StreamHandler(JupyterHandler, websocket.WebSocketHandler):
    """WS /hivemind/api/stream: task changes for every socket; events for subscribed tasks."""

    auth_resource = AUTH_RESOURCE

    @property
    def feed(self) -> TaskFeed:
        return cast(TaskFeed, self.settings["hivemind_feed"])

    async def pre_get(self) -> None:
        user = self.current_user
        allowed = await ensure_async(self.authorizer.is_authorized(self, user, "execute", AUTH_RESOURCE))
        if not allowed:
            raise web.HTTPError(403)

    @ws_authenticated
    async def get(self, *args: Any, **kwargs: Any) -> None:
        await self.pre_get()
        result = super().get(*args, **kwargs)
        if result is not None:
            await result

    def open(self, *args: Any, **kwargs: Any) -> None:
        self.feed.add(self)

    def on_close(self) -> None:
        self.feed.remove(self)

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.write_message(json.dumps(message))
        except websocket.WebSocketClosedError:
            self.feed.remove(self)

    def drop(self, code: int, reason: str) -> None:
        self.close(code, reason)

    def _error(self, message: str, status: int = 400) -> None:
        self.send({"type": "error", "error": message, "status": status})

    def on_message(self, message: str | bytes) -> None:
        if len(message) > MAX_MESSAGE_BYTES:
            self._error("message too large")
            return
        try:
            data = json.loads(message)
        except (ValueError, UnicodeDecodeError, RecursionError):  # nesting too deep included
            self._error("messages must be JSON objects")
            return
        if not isinstance(data, dict):
            self._error("messages must be JSON objects")
            return
        if "subscribe" in data:
            task_id, after = data.get("subscribe"), data.get("after", 0)
            if not isinstance(task_id, str) or not TASK_ID.match(task_id):
                self._error("subscribe needs a task id")
            elif isinstance(after, bool) or not isinstance(after, int) or not 0 <= after <= INT64_MAX:
                self._error(f"after must be a whole number from 0 to {INT64_MAX}")
            elif self.feed.subscriptions(self) >= MAX_SUBSCRIPTIONS:
                self._error(f"at most {MAX_SUBSCRIPTIONS} subscriptions per socket")
            else:
                self.feed.subscribe(self, task_id, after)
        elif "unsubscribe" in data:
            task_id = data.get("unsubscribe")
            if not isinstance(task_id, str):
                self._error("unsubscribe needs a task id")
            else:
                self.feed.unsubscribe(self, task_id)
        else:
            self._error('unknown message; send {"subscribe": ID, "after": SEQ} or {"unsubscribe": ID}')
