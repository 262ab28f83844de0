"""The pool's live view of its workers: who is connected, when each was last heard from, what each
may use (capacity) and what it is using (allocations). The database keeps the durable part."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from dataclasses import dataclass, field

from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.states import worker_present

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Amount:
    cpus: float = 0.0
    memory: int = 0
    gpus: int = 0

    def __add__(self, other: Amount) -> Amount:
        return Amount(self.cpus + other.cpus, self.memory + other.memory, self.gpus + other.gpus)

    def __sub__(self, other: Amount) -> Amount:
        return Amount(self.cpus - other.cpus, self.memory - other.memory, self.gpus - other.gpus)

    def covers(self, want: Amount) -> bool:
        return self.cpus + 1e-9 >= want.cpus and self.memory >= want.memory and self.gpus >= want.gpus

    def to_pb(self) -> pb.Resources:
        return pb.Resources(cpus=self.cpus, memory_bytes=self.memory, gpus=self.gpus)

    @classmethod
    def of(cls, resources: pb.Resources) -> Amount:
        return cls(resources.cpus, resources.memory_bytes, resources.gpus)


def capacity_of(facts: pb.MachineFacts) -> Amount:
    """What the admin lets the pool use: facts.capacity when set, else the whole machine."""
    cap = facts.capacity
    return Amount(
        cap.cpus if cap.cpus > 0 else float(facts.cpu_cores),
        cap.memory_bytes if cap.memory_bytes > 0 else facts.memory_bytes,
        cap.gpus if cap.gpus > 0 else len(facts.gpus),
    )


AttemptKey = tuple[str, int]  # (task id, attempt)


@dataclass
class WorkerEntry:
    worker_id: str
    name: str
    facts: pb.MachineFacts
    state: int = pb.WORKER_ONLINE
    last_seen: float = field(default_factory=time.monotonic)
    last_heartbeat_at: float = field(default_factory=time.time)
    outbox: asyncio.Queue[pb.PoolMessage | None] | None = None  # set while a Connect stream is open
    session: int = 0
    allocations: dict[AttemptKey, Amount] = field(default_factory=dict)
    reported: set[AttemptKey] = field(default_factory=set)  # what the worker says it runs
    zombies: set[AttemptKey] = field(default_factory=set)  # ended here, still running there
    left_draining: bool = False  # its stream closed while it was draining (see liveness)
    env_cache: pb.EnvironmentCacheStats | None = None  # from its last heartbeat that had them

    @classmethod
    def from_row(cls, row: sqlite3.Row, state: int | None = None) -> WorkerEntry:
        """The live entry for a worker known only from its stored row, in the row's state unless
        another is given."""
        return cls(
            row["id"],
            row["name"],
            pb.MachineFacts.FromString(row["facts"]),
            state=row["state"] if state is None else state,
            last_heartbeat_at=row["last_heartbeat_at"],
        )

    @property
    def capacity(self) -> Amount:
        return capacity_of(self.facts)

    @property
    def task_disk(self) -> int:
        """The most disk one task may use there (0: the worker did not say, so no limit is known).
        Per task, not shared: it is never summed into allocations."""
        return max(self.facts.capacity.disk_bytes, 0)

    @property
    def allocated(self) -> Amount:
        total = Amount()
        for amount in self.allocations.values():
            total = total + amount
        return total

    @property
    def free(self) -> Amount:
        return self.capacity - self.allocated

    @property
    def connected(self) -> bool:
        return self.outbox is not None

    @property
    def present(self) -> bool:
        """Online or draining: it holds and runs work, connected or not (yet)."""
        return worker_present(self.state)

    @property
    def live(self) -> bool:
        """Present with its stream open: its capacity counts in the pool's total."""
        return self.connected and self.present

    @property
    def schedulable(self) -> bool:
        """Takes new tasks: connected and online (not draining)."""
        return self.connected and self.state == pb.WORKER_ONLINE

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.facts.labels)

    @property
    def pythons(self) -> tuple[str, ...]:
        """The Python minor versions it runs tasks with (none said: unknown, an older worker)."""
        return tuple(self.facts.python_versions)

    @property
    def images(self) -> tuple[str, ...]:
        return tuple(self.facts.images)

    def reconcile(self, running: set[AttemptKey]) -> list[AttemptKey]:
        """Take the worker's list of running attempts; free ended ones it has stopped; return the
        attempts it runs that the pool does not know as current (to be cancelled)."""
        self.reported = running
        for key in list(self.zombies):
            if key not in running:
                self.zombies.discard(key)
                self.allocations.pop(key, None)
        return [key for key in running if key not in self.allocations or key in self.zombies]

    def send(self, message: pb.PoolMessage) -> bool:
        if self.outbox is None:
            return False
        self.outbox.put_nowait(message)
        return True


class Fleet:
    def __init__(self) -> None:
        self.workers: dict[str, WorkerEntry] = {}
        self._sessions = 0

    def get(self, worker_id: str) -> WorkerEntry | None:
        return self.workers.get(worker_id)

    def add(self, entry: WorkerEntry) -> None:
        self.workers[entry.worker_id] = entry

    def attach(self, entry: WorkerEntry) -> tuple[int, asyncio.Queue[pb.PoolMessage | None]]:
        """A new Connect stream for the worker; an older stream of the same worker is closed."""
        if entry.outbox is not None:
            entry.outbox.put_nowait(None)
        self._sessions += 1
        entry.session = self._sessions
        entry.outbox = asyncio.Queue()
        entry.left_draining = False
        entry.last_seen = time.monotonic()
        entry.last_heartbeat_at = time.time()
        return entry.session, entry.outbox

    def detach(self, entry: WorkerEntry, session: int) -> bool:
        """The stream of `session` ended; True when it was the worker's current one."""
        if entry.session != session:
            return False
        entry.outbox = None
        return True

    def gone(self, entry: WorkerEntry) -> None:
        """The worker closed its current stream: OFFLINE now; the heartbeat timeout counts from here."""
        entry.left_draining = entry.state == pb.WORKER_DRAINING
        entry.state = pb.WORKER_OFFLINE
        entry.last_seen = time.monotonic()

    def online(self) -> list[WorkerEntry]:
        return [w for w in self.workers.values() if w.present]
