"""The WebSocket fan-out: one shared task watcher and one event watcher per task, many sockets.

However many browser tabs are open, the server asks the pool about the user's tasks once per
`poll_interval` (and only while a socket is open), and follows each subscribed task's events
with a single WatchTask stream whose events are copied to every subscribed socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import ws_authenticated
from jupyter_server.base.handlers import JupyterHandler
from tornado import web, websocket

from hivemind_nodepool.client import PoolClient
from hivemind_nodepool.errors import Cancelled, HiveMindError, Unauthenticated
from hivemind_nodepool.proto import nodepool_pb2 as pb

from .handlers.base import AUTH_RESOURCE, http_status
from .handlers.tasks import TASK_ID
from .jsonify import to_dict
from .pool import PoolConnector

log = logging.getLogger(__name__)

ACTIVE_STATES = (pb.QUEUED, pb.ASSIGNED, pb.PREPARING, pb.RUNNING, pb.UPLOADING)
RECENT_PAGE = 20
MAX_BUFFERED_EVENTS = 20_000
MAX_SUBSCRIPTIONS = 200
MAX_MESSAGE_BYTES = 64 * 1024


class Socket(Protocol):
    def send(self, message: dict[str, Any]) -> None: ...


def _change_key(task: pb.Task) -> tuple[Any, ...]:
    return (task.state, task.updated_at, task.progress.cells_done, task.progress.cells_total,
            task.worker_id, task.pending_reason, task.attempt, task.last_event_seq)


class EventWatcher:
    """Follows one task's events in a thread and hands each to the subscribed sockets, in order."""

    def __init__(self, task_id: str, client: PoolClient, loop: asyncio.AbstractEventLoop,
                 on_idle: Callable[[EventWatcher], None]) -> None:
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
                self.loop.call_soon_threadsafe(self._deliver, int(event.seq), to_dict(event))
        except Cancelled:
            return  # stopped by closing the client
        except HiveMindError as exc:
            if not self._stopped.is_set():
                status = http_status(exc)
                message = f"no task {self.task_id} (it does not exist or is not yours)" \
                    if status in (403, 404) else str(exc)
                error = {"type": "error", "task_id": self.task_id, "error": message,
                         "status": 404 if status == 403 else status}
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
            socket.send({"type": "error", "task_id": self.task_id, "status": 400,
                         "error": f"events up to {self.events[0][0] - 1} are no longer buffered; "
                                  "read them with GET /hivemind/api/tasks/{id}/events"})
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


class TaskFeed:
    """The server's one view of the user's tasks, shared by every open socket."""

    def __init__(self, connector: PoolConnector, executor: Executor, interval: float) -> None:
        self.connector = connector
        self.executor = executor
        self.interval = interval
        self.sockets: set[Socket] = set()
        self.watchers: dict[str, EventWatcher] = {}
        self.polls = 0  # pool queries made, for tests and diagnostics
        self._snapshot: dict[str, tuple[Any, ...]] | None = None
        self._active: set[str] = set()
        self._signed_in: bool | None = None
        self._poller: asyncio.Task[None] | None = None

    # -- sockets --------------------------------------------------------------------------------

    def add(self, socket: Socket) -> None:
        self.sockets.add(socket)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll_loop())

    def remove(self, socket: Socket) -> None:
        self.sockets.discard(socket)
        for watcher in list(self.watchers.values()):
            if socket in watcher.subscribers:
                watcher.remove(socket)
        if not self.sockets and self._poller is not None:
            self._poller.cancel()
            self._poller = None
            self._snapshot = None

    def subscribe(self, socket: Socket, task_id: str, after: int) -> None:
        watcher = self.watchers.get(task_id)
        if watcher is None:
            try:
                client = self.connector.new_client()
            except HiveMindError as exc:
                socket.send({"type": "error", "task_id": task_id, "error": str(exc),
                             "status": http_status(exc)})
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
        if self._poller is not None:
            self._poller.cancel()
        for watcher in list(self.watchers.values()):
            watcher.stop()
        self.watchers.clear()
        self.sockets.clear()

    # -- the shared task watcher ----------------------------------------------------------------

    def _poll_once(self) -> list[pb.Task] | None:
        """Blocking: the tasks that changed since the last poll (None when signed out)."""
        self.polls += 1
        try:
            client = self.connector.client()
            active = client.list_tasks(ACTIVE_STATES, page_size=500).tasks
            recent = client.list_tasks(page_size=RECENT_PAGE).tasks
        except Unauthenticated:
            return None
        current = {t.id: t for t in recent}
        current.update({t.id: t for t in active})
        for task_id in self._active - current.keys():  # ended since the last poll
            try:
                current[task_id] = client.get_task(task_id)
            except HiveMindError:
                continue
        self._active = {t.id for t in active}
        keys = {task_id: _change_key(task) for task_id, task in current.items()}
        previous = self._snapshot
        self._snapshot = keys
        if previous is None:
            return []
        return [current[i] for i, key in keys.items() if previous.get(i) != key]

    async def _poll_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self.sockets:
            try:
                changed = await loop.run_in_executor(self.executor, self._poll_once)
            except asyncio.CancelledError:
                raise
            except HiveMindError as exc:
                log.info("the task watcher cannot reach the pool: %s", exc)
                changed = []
            except Exception:
                log.exception("the task watcher failed; it keeps going")
                changed = []
            signed_in = changed is not None
            if signed_in != self._signed_in:
                if self._signed_in is not None:
                    self.broadcast({"type": "session", "signed_in": signed_in})
                self._signed_in = signed_in
                if not signed_in:
                    self._snapshot = None
            for task in changed or []:
                self.broadcast({"type": "task", "task": to_dict(task)})
            await asyncio.sleep(self.interval)


class StreamHandler(JupyterHandler, websocket.WebSocketHandler):
    """WS /hivemind/api/stream: task changes for every socket; events for subscribed tasks."""

    auth_resource = AUTH_RESOURCE

    @property
    def feed(self) -> TaskFeed:
        return self.settings["hivemind_feed"]

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

    def _error(self, message: str, status: int = 400) -> None:
        self.send({"type": "error", "error": message, "status": status})

    def on_message(self, message: str | bytes) -> None:
        if len(message) > MAX_MESSAGE_BYTES:
            self._error("message too large")
            return
        try:
            data = json.loads(message)
        except (ValueError, UnicodeDecodeError):
            self._error("messages must be JSON objects")
            return
        if not isinstance(data, dict):
            self._error("messages must be JSON objects")
            return
        if "subscribe" in data:
            task_id, after = data.get("subscribe"), data.get("after", 0)
            if not isinstance(task_id, str) or not TASK_ID.match(task_id):
                self._error("subscribe needs a task id")
            elif isinstance(after, bool) or not isinstance(after, int) or after < 0:
                self._error("after must be a whole number, 0 or more")
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
