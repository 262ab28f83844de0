"""An attempt's live events: numbered from 1, batched about every 100 ms, resent until acknowledged.

Events are numbered when a batch is cut, so consecutive output text merges into one event; a batch
sent again after a lost answer carries the same numbers, and the pool stores each number once. The
live output of a task is capped: past the cap one NOTICE says so and further output is dropped
(the executed notebook still holds all of it, or its cell says what it left out); later notices
still pass, up to MAX_NOTICE_BYTES. While the pool's disk is full, events wait here.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from hivemind_nodepool.client import PoolClient
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol import phases
from hivemind_nodepool.protocol.errors import Conflict, DiskFull, HiveMindError, NotFound, PoolUnavailable

log = logging.getLogger(__name__)

BATCH_INTERVAL = 0.1
MAX_BATCH_BYTES = 1024 * 1024
MAX_BATCH_EVENTS = 500
MAX_TEXT_CHARS = 200_000  # one text event; the pool takes up to 256 KiB
MAX_DATA_BYTES = 2 * 1024 * 1024  # one display output; a bigger one is replaced by a notice
MERGE_LIMIT = 64 * 1024  # consecutive text of one stream merges up to this size
HELD_BACKOFF = 30.0  # the longest wait between tries while the pool's disk is full
MAX_NOTICE_BYTES = 64 * 1024  # notices let through after the live output was cut
_TEXT_KINDS = (pb.TaskEvent.STDOUT, pb.TaskEvent.STDERR)


def _size(event: pb.TaskEvent) -> int:
    return len(event.text) + len(event.data_json)


class EventStream:
    """Collects one attempt's events and delivers them, in order, exactly once."""

    def __init__(
        self,
        client: PoolClient,
        task_id: str,
        attempt: int,
        max_bytes: int = 16 * 1024**2,
        on_fenced: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.task_id = task_id
        self.attempt = attempt
        self.max_bytes = max_bytes
        self.on_fenced = on_fenced
        self._lock = threading.Condition()
        self._pending: list[pb.TaskEvent] = []  # not numbered yet
        self._unacked: list[pb.TaskEvent] = []  # numbered, sent or not, not acknowledged
        self._next_seq = 1
        self.acked = 0
        self.used_bytes = 0
        self.dropped_bytes = 0
        self.notice_bytes = 0
        self.truncated = False
        self.fenced = False
        self.held = False  # the pool's disk is full: events wait, without a deadline
        self._closing = False
        self._abandoned = False
        self._thread = threading.Thread(target=self._loop, name=f"events-{task_id}-{attempt}", daemon=True)
        self._thread.start()

    # -- producing ------------------------------------------------------------------------------

    def add(
        self,
        kind: int,
        text: str = "",
        data: dict[str, Any] | None = None,
        progress: tuple[int, int] | None = None,
    ) -> None:
        event = pb.TaskEvent(kind=kind, at=time.time(), text=text, attempt=self.attempt)  # type: ignore[arg-type]
        if data is not None:
            event.data_json = json.dumps(data, separators=(",", ":"), default=str)
        if progress is not None:
            event.progress.cells_done, event.progress.cells_total = progress
        with self._lock:
            if kind != pb.TaskEvent.PROGRESS and not self._admit(event):
                return
            self._pending.append(event)
            self._lock.notify_all()

    def notice(self, text: str) -> None:
        self.add(pb.TaskEvent.NOTICE, text=text)

    def phase(self, name: str, **details: Any) -> None:
        """The attempt entered a phase ("fetching", "environment", "container", "kernel",
        "running", "uploading"), or moved on within one (details, e.g. step="downloading 3
        packages"): what the live view and the panel's timeline show while nothing else happens."""
        self.add(pb.TaskEvent.PHASE, text=name, data=details or None)

    def _admit(self, event: pb.TaskEvent) -> bool:
        """Apply the size caps (caller holds the lock)."""
        size = _size(event)
        if event.kind in _TEXT_KINDS and len(event.text) > MAX_TEXT_CHARS:
            event.text = event.text[:MAX_TEXT_CHARS] + "\n[... cut: too long to stream in one piece]\n"
            size = _size(event)
        elif len(event.data_json) > MAX_DATA_BYTES:
            self.dropped_bytes += size
            event.kind = pb.TaskEvent.NOTICE
            event.text = (
                f"an output of {size / 1024**2:.1f} MiB was too big to stream; the executed notebook has it"
            )
            event.data_json = ""
            size = _size(event)
        if self.truncated:
            # Notices still pass, a few: what HiveMind says about the run (a cell that printed
            # more than its notebook keeps, the outcome) must reach the user after the cap.
            if event.kind == pb.TaskEvent.NOTICE and self.notice_bytes + size <= MAX_NOTICE_BYTES:
                self.notice_bytes += size
                return True
            self.dropped_bytes += size
            return False
        if self.used_bytes + size > self.max_bytes:
            self.truncated = True
            room = self.max_bytes - self.used_bytes
            if event.kind in _TEXT_KINDS and room > 0:  # keep what fits, up to a line end
                cut = event.text.rfind("\n", 0, room) + 1 or room
                self._pending.append(
                    pb.TaskEvent(kind=event.kind, at=event.at, attempt=self.attempt, text=event.text[:cut])
                )
                self.used_bytes += cut
                size -= cut
            self.dropped_bytes += size
            limit_mib = self.max_bytes / 1024**2
            notice = (
                f"output truncated: this task's live output passed {limit_mib:.0f} MiB, "
                "so further output is not streamed (the executed notebook still has it)"
            )
            self._pending.append(
                pb.TaskEvent(kind=pb.TaskEvent.NOTICE, at=time.time(), attempt=self.attempt, text=notice)
            )
            return False
        self.used_bytes += size
        return True

    # -- delivering -----------------------------------------------------------------------------

    def _number(self) -> None:
        """Merge adjacent text of one stream, then number the pending events (lock held)."""
        merged: list[pb.TaskEvent] = []
        for event in self._pending:
            last = merged[-1] if merged else None
            if (
                last is not None
                and event.kind in _TEXT_KINDS
                and last.kind == event.kind
                and len(last.text) + len(event.text) <= MERGE_LIMIT
                and last.attempt == event.attempt
            ):
                last.text += event.text
                continue
            merged.append(event)
        for event in merged:
            event.seq = self._next_seq
            self._next_seq += 1
        self._unacked.extend(merged)
        self._pending.clear()

    def _batch(self) -> list[pb.TaskEvent]:
        batch: list[pb.TaskEvent] = []
        size = 0
        for event in self._unacked:
            if batch and (len(batch) >= MAX_BATCH_EVENTS or size + _size(event) > MAX_BATCH_BYTES):
                break
            batch.append(event)
            size += _size(event)
        return batch

    def _loop(self) -> None:
        backoff = 0.5
        while True:
            with self._lock:
                while not (self._pending or self._unacked or self._closing):
                    self._lock.wait()
                if (
                    self.fenced
                    or self._abandoned
                    or (self._closing and not self._pending and not self._unacked)
                ):
                    return
                self._number()
                batch = self._batch()
            if not batch:
                continue
            try:
                acked = self.client.report_events(
                    pb.EventBatch(task_id=self.task_id, attempt=self.attempt, events=batch)
                )
                backoff = 0.5
            except (Conflict, NotFound) as exc:
                log.warning("events of %s attempt %d refused: %s", self.task_id, self.attempt, exc)
                with self._lock:
                    self.fenced = True
                    self._lock.notify_all()
                if self.on_fenced:
                    self.on_fenced(str(exc))
                return
            except DiskFull as exc:
                # The pool takes them once its disk has room: hold them (and the result, which
                # waits behind them in close) for as long as that takes, asking less often.
                with self._lock:
                    self.held = True
                log.warning(
                    "events of %s wait for room on the pool (%s); retrying in %.1fs",
                    self.task_id,
                    exc,
                    backoff,
                )
                time.sleep(backoff)
                backoff = min(backoff * 2, HELD_BACKOFF)
                continue
            except HiveMindError as exc:
                level = logging.DEBUG if isinstance(exc, PoolUnavailable) else logging.WARNING
                log.log(
                    level, "sending events of %s failed (%s); retrying in %.1fs", self.task_id, exc, backoff
                )
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            with self._lock:
                self.held = False
                self.acked = max(self.acked, acked)
                self._unacked = [e for e in self._unacked if e.seq > self.acked]
                self._lock.notify_all()
            time.sleep(BATCH_INTERVAL)  # let output gather into the next batch

    def flush(self, timeout: float, wait_for_room: bool = False) -> bool:
        """Wait until everything added so far is acknowledged; False on timeout or fencing. With
        wait_for_room the timeout does not run out while the pool's disk is full."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._lock.notify_all()
            while (self._pending or self._unacked) and not self.fenced:
                left = deadline - time.monotonic()
                if (left <= 0 and not (wait_for_room and self.held)) or not self._thread.is_alive():
                    return False
                self._lock.wait(0.2 if left <= 0 else min(left, 0.2))
            return not self.fenced

    def close(self, timeout: float = 30.0, wait_for_room: bool = False) -> bool:
        """Deliver what is left (up to timeout, longer with wait_for_room while the pool's disk is
        full), then stop the sender."""
        with self._lock:
            if self.truncated and self.dropped_bytes:
                self._pending.append(
                    pb.TaskEvent(
                        kind=pb.TaskEvent.NOTICE,
                        at=time.time(),
                        attempt=self.attempt,
                        text=f"{self.dropped_bytes / 1024**2:.1f} MiB of output was not streamed",
                    )
                )
        delivered = self.flush(timeout, wait_for_room)
        with self._lock:
            self._closing = True
            self._abandoned = not delivered  # the sender gives up on what is left
            self._lock.notify_all()
        self._thread.join(timeout=1.0)
        return delivered


class EnvironmentReport:
    """An environment build's steps as "environment" phase events, and its notices."""

    def __init__(self, events: EventStream) -> None:
        self.events = events

    def step(self, text: str) -> None:
        self.events.phase(phases.ENVIRONMENT, cached=False, step=text)

    def reused(self) -> None:
        self.events.phase(phases.ENVIRONMENT, cached=True)

    def notice(self, text: str) -> None:
        self.events.notice(text)
