"""The pool's in-process change signal. Per task: an Event that WatchTask streams wait on, so they
follow new events without polling the database. For every task: listeners (the WatchTasks feed)
told the id of each task that changed, including changes that store no event (pending reasons,
progress, a kept result)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

Listener = Callable[[str], None]


class TaskNotifier:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._listeners: list[Listener] = []

    def notify(self, task_id: str) -> None:
        """The task got a new event (and may have changed otherwise too)."""
        for event in self._waiters.get(task_id, ()):
            event.set()
        self.changed(task_id)

    def changed(self, task_id: str) -> None:
        """The task's row changed; tell the listeners (not the per-task event waiters)."""
        for listener in self._listeners:
            try:
                listener(task_id)
            except Exception:  # a listener's bug must not fail the transition that notified it
                log.exception("a task change listener failed")

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def notify_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()

    @contextmanager
    def subscribe(self, task_id: str) -> Iterator[asyncio.Event]:
        """An Event set whenever the task gets a new event; clear it before re-reading."""
        event = asyncio.Event()
        self._waiters.setdefault(task_id, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(task_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[task_id]

    def watchers(self) -> int:
        return sum(len(v) for v in self._waiters.values())
