"""The worker's lease: how long its running tasks may go on without word from the pool.

The pool answers every heartbeat with an ack that names the heartbeat (its seq), and the Hello with
the Welcome, which says how long a lease lasts. Each answer extends the lease to the time the
answered message was *sent* plus that duration. The pool counts its heartbeat timeout from when it
*received* the last heartbeat, which is later, and the lease is shorter than that timeout by a
margin: the lease always lapses before the pool may declare this worker lost and rerun its tasks.

Each running attempt gets a lease file, `<attempt>/lease/expires`, holding the lease's end as
wall-clock seconds; the attempt's folder is mounted read-only into its sandbox, where the runner
watches it and stops the notebook when the time passes (runtime/runner.py). A frozen, crashed or
cut-off worker rewrites nothing, so its tasks stop on their own. Wall-clock time is shared by the
worker and its sandboxes (one kernel); the pool's clock plays no part.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

log = logging.getLogger(__name__)

LEASE_FILE = "expires"
MAX_PENDING = 1000  # heartbeats sent and not yet answered that are remembered


class Lease:
    """The lease's end, the heartbeats waiting for an answer, and the files that carry it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.duration = 0.0  # 0: the pool grants no lease, and tasks are not bound to one
        self._until = 0.0  # time.monotonic() at which the lease lapses
        self._seq = 0
        self._sent: OrderedDict[int, float] = OrderedDict()  # heartbeat seq -> when it was queued
        self._files: set[Path] = set()
        self._modes: dict[Path, int] = {}  # each file's mode: readable by a container's user or private
        self._writing = threading.Lock()  # one write at a time, so a newer end is never overwritten

    # -- what the pool says ---------------------------------------------------------------------

    def stamp(self) -> int:
        """A number for the next heartbeat, remembering when it was sent (queued, which is sooner)."""
        with self._lock:
            self._seq += 1
            self._sent[self._seq] = time.monotonic()
            while len(self._sent) > MAX_PENDING:
                self._sent.popitem(last=False)
            return self._seq

    def welcome(self, hello_sent: float, duration: float) -> None:
        """The pool took the Hello queued at `hello_sent` (monotonic) and grants leases of `duration`."""
        with self._lock:
            self.duration = max(0.0, duration)
            self._sent.clear()  # a new stream: answers to the old one's heartbeats never come
        self._extend(hello_sent)

    def answered(self, seq: int) -> None:
        """The pool's ack of heartbeat `seq`: extend the lease from when that heartbeat was sent."""
        with self._lock:
            sent = self._sent.pop(seq, None)
            while self._sent and next(iter(self._sent)) < seq:  # older ones are answered too
                self._sent.popitem(last=False)
        if sent is not None:
            self._extend(sent)

    def _extend(self, base: float) -> None:
        with self._lock:
            if not self.duration:
                return
            self._until = max(self._until, base + self.duration)
            files = list(self._files)
        for path in files:
            self._write(path)

    # -- what the tasks see ---------------------------------------------------------------------

    @property
    def bound(self) -> bool:
        """Whether tasks are bound to the lease (the pool granted one)."""
        return self.duration > 0

    def lapsed(self, now: float | None = None) -> bool:
        return self.bound and (time.monotonic() if now is None else now) >= self._until

    def expires_at(self) -> float:
        """The lease's end as wall-clock seconds (what the sandbox can compare with its clock)."""
        return time.time() + (self._until - time.monotonic())

    def attach(self, folder: Path, *, shared: bool = False) -> Path:
        """Create `folder` with the lease file in it, kept current until `detach`; returns the file.
        `shared`: the sandbox runs as another user (a container's), who must read it; it holds
        nothing secret. Otherwise it is as private as the rest of the state folder."""
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755 if shared else 0o700)
        path = folder / LEASE_FILE
        with self._lock:
            self._files.add(path)
            self._modes[path] = 0o644 if shared else 0o600
        self._write(path)
        return path

    def detach(self, path: Path) -> None:
        with self._lock:
            self._files.discard(path)
            self._modes.pop(path, None)

    def _write(self, path: Path) -> None:
        """Replace the file whole (a rename), so the runner never reads half a number."""
        partial = path.with_name(f".{LEASE_FILE}.partial")
        with self._writing:
            try:
                partial.write_text(f"{self.expires_at():.3f}\n")
                partial.chmod(self._modes.get(path, 0o600))
                os.replace(partial, path)
            except OSError as exc:  # the attempt's folder went away meanwhile
                log.debug("could not write the lease file %s: %s", path, exc)
                with contextlib.suppress(OSError):
                    partial.unlink()
