"""Placement: which queued task goes to which worker.

A task goes only to a connected, non-draining worker whose labels include the task's and whose free
CPU, memory and GPUs cover the request, and whose per-task disk limit covers the task's disk (a
per-task limit, never summed); allocations are counted here, so a worker's capacity is never
overcommitted. Between users the pool is fair: the next task comes from the user with the
smallest dominant share of what is running (the largest of their CPU, memory and GPU fractions of
the pool), then by priority, then by age. A task that cannot be placed gets a reason per resource,
written in the same cycle. Cycles run when something changes (the TaskBook's wake event) and on a
periodic tick.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import defaultdict, deque
from dataclasses import dataclass

from hivemind_nodepool.pool.fleet import Amount, Fleet, WorkerEntry
from hivemind_nodepool.pool.lifecycle import TaskBook, amount_of
from hivemind_nodepool.pool.loops import repeat
from hivemind_nodepool.pool.metrics import PoolMetrics
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.environment import python_minor
from hivemind_nodepool.protocol.placement import (
    LARGEST,
    LARGEST_DISK,
    NO_IMAGE_WORKER,
    NO_LABELLED_WORKER,
    NO_PYTHON_WORKER,
    NO_SINGLE_WORKER,
)
from hivemind_nodepool.protocol.states import ON_WORKER_STATES
from hivemind_nodepool.protocol.units import format_size

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """What a task needs of a worker's runtimes: its Python (only where `required`, else preferred)
    and, in mode "image", an image the worker allow-lists."""

    python: str = ""  # a minor version, e.g. "3.12"
    required: bool = False
    image: str = ""

    @classmethod
    def of(cls, manifest: pb.Manifest) -> Runtime:
        if not manifest.HasField("environment"):
            return cls()
        env = manifest.environment
        python = python_minor(env.python_version) if env.python_version else ""
        return cls(python, env.require_python and bool(python), env.image if env.mode == "image" else "")

    def fits(self, worker: WorkerEntry) -> bool:
        if self.image and self.image not in worker.images:
            return False
        return not self.required or self.python in worker.pythons

    def preferred(self, worker: WorkerEntry) -> bool:
        return not self.python or self.python in worker.pythons


NO_RUNTIME = Runtime()
Signature = tuple[float, int, int, int, tuple[tuple[str, str], ...], Runtime]
FleetView = tuple[
    tuple[str, int, bool, Amount, int, tuple[tuple[str, str], ...], tuple[str, ...], tuple[str, ...]], ...
]


def fleet_view(workers: list[WorkerEntry], planned: dict[str, Amount] | None = None) -> FleetView:
    """What placement depends on, per worker: equal views give equal verdicts. `planned` is taken
    off the free capacity (placements decided but not yet in the allocations)."""
    planned = planned or {}
    return tuple(
        (
            w.worker_id,
            w.state,
            w.connected,
            w.free - planned.get(w.worker_id, Amount()),
            w.task_disk,
            tuple(sorted(w.facts.labels.items())),
            w.pythons,
            w.images,
        )
        for w in workers
    )


def _plural(n: float, word: str) -> str:
    return f"{n:g} {word}" + ("" if n == 1 else "s")


def labels_match(want: dict[str, str], have: dict[str, str]) -> bool:
    return all(have.get(key) == value for key, value in want.items())


def dominant_share(use: Amount, total: Amount) -> float:
    shares = [
        use.cpus / total.cpus if total.cpus else 0.0,
        use.memory / total.memory if total.memory else 0.0,
        use.gpus / total.gpus if total.gpus else 0.0,
    ]
    return max(shares)


def disk_fits(disk: int, worker: WorkerEntry) -> bool:
    """A worker that states no per-task disk limit takes any request."""
    return disk <= 0 or worker.task_disk <= 0 or disk <= worker.task_disk


def _runtime_reason(runtime: Runtime, workers: list[WorkerEntry]) -> str:
    """Why none of these workers has the task's image or required Python ('' when some has)."""
    if runtime.image and not any(runtime.image in w.images for w in workers):
        return f"needs image {runtime.image}; {NO_IMAGE_WORKER} (its admin adds it with --allow-image)"
    if runtime.required and not any(runtime.fits(w) for w in workers):
        have = sorted({v for w in workers for v in w.pythons})
        runs = f" (they run {', '.join(have)})" if have else ""
        return f"needs Python {runtime.python}; {NO_PYTHON_WORKER}{runs}"
    return ""


def explain(
    want: Amount,
    labels: dict[str, str],
    workers: list[WorkerEntry],
    *,
    disk: int = 0,
    runtime: Runtime = NO_RUNTIME,
) -> str:
    """Why a task cannot be placed right now, one clause per blocking resource."""
    online = [w for w in workers if w.connected and w.state == pb.WORKER_ONLINE]
    if not online:
        draining = any(w.connected for w in workers)
        return "no worker is online" + (" (the connected ones are draining)" if draining else "")
    matching = [w for w in online if labels_match(labels, w.labels)]
    if not matching:
        wanted = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))
        return f"needs labels {wanted}; {NO_LABELLED_WORKER}"
    reason = _runtime_reason(runtime, matching)
    if reason:
        return reason
    matching = [w for w in matching if runtime.fits(w)]
    reasons = []
    most_cpus = max(w.capacity.cpus for w in matching)
    most_memory = max(w.capacity.memory for w in matching)
    most_gpus = max(w.capacity.gpus for w in matching)
    if want.cpus > most_cpus + 1e-9:
        reasons.append(f"needs {_plural(want.cpus, 'CPU')}, {LARGEST} {most_cpus:g}")
    if want.memory > most_memory:
        reasons.append(f"needs {format_size(want.memory)} of memory, {LARGEST} {format_size(most_memory)}")
    if want.gpus > most_gpus:
        reasons.append(f"needs {_plural(want.gpus, 'GPU')}, {LARGEST} {most_gpus}")
    if not any(disk_fits(disk, w) for w in matching):
        most_disk = max(w.task_disk for w in matching)
        reasons.append(f"needs {format_size(disk)} of disk, {LARGEST_DISK} {format_size(most_disk)} per task")
    if reasons:
        return "; ".join(reasons)
    if not any(w.capacity.covers(want) and disk_fits(disk, w) for w in matching):
        return f"{NO_SINGLE_WORKER}: " + _describe(want, disk)
    return f"all fitting workers are busy (needs {_describe(want, disk)})"


def _describe(want: Amount, disk: int = 0) -> str:
    parts = [_plural(want.cpus, "CPU"), format_size(want.memory) + " memory"]
    if want.gpus:
        parts.append(_plural(want.gpus, "GPU"))
    if disk > 0:
        parts.append(format_size(disk) + " disk")
    return ", ".join(parts)


def pick_worker(
    want: Amount,
    labels: dict[str, str],
    workers: list[WorkerEntry],
    planned: dict[str, Amount] | None = None,
    *,
    disk: int = 0,
    runtime: Runtime = NO_RUNTIME,
) -> WorkerEntry | None:
    """A fitting worker: keep GPU machines for GPU work, then prefer those that run the task's
    Python, then spread by the most free CPUs. `planned` is what the current pass already gave
    each worker (not yet in its allocations)."""
    planned = planned or {}
    best: tuple[tuple[int, bool, float, str], WorkerEntry] | None = None
    for w in workers:
        if not w.schedulable or not labels_match(labels, w.labels) or not disk_fits(disk, w):
            continue
        if not runtime.fits(w):
            continue
        free = w.free - planned.get(w.worker_id, Amount())
        if not free.covers(want):
            continue
        key = (w.capacity.gpus if want.gpus == 0 else 0, not runtime.preferred(w), -free.cpus, w.worker_id)
        if best is None or key < best[0]:
            best = (key, w)
    return best[1] if best is not None else None


class Scheduler:
    def __init__(self, book: TaskBook, fleet: Fleet, metrics: PoolMetrics, interval: float) -> None:
        self.book = book
        self.fleet = fleet
        self.metrics = metrics
        self.interval = interval
        self.cycles = 0
        self._wish_cache: dict[str, tuple[dict[str, str], int, Runtime]] = {}  # id -> labels, disk, runtime
        self._last_view: FleetView | None = None  # the workers as the last completed pass saw them
        self._failed: dict[Signature, str] = {}  # that pass's reasons, by request signature
        self._metrics_at = 0.0  # when the gauges were last refreshed (monotonic)

    def _wishes(self, row: sqlite3.Row) -> tuple[dict[str, str], int, Runtime]:
        """The task's labels, disk and runtime, from its manifest (parsed once)."""
        wishes = self._wish_cache.get(row["id"])
        if wishes is None:
            manifest = pb.Manifest.FromString(row["manifest"]) if row["manifest"] else pb.Manifest()
            wishes = dict(manifest.labels), max(manifest.resources.disk_bytes, 0), Runtime.of(manifest)
            self._wish_cache[row["id"]] = wishes
        return wishes

    def _prune_wishes(self, queued: list[sqlite3.Row]) -> None:
        if len(self._wish_cache) > 2 * len(queued) + 1000:  # forget tasks that left the queue
            keep = {row["id"] for row in queued}
            self._wish_cache = {k: v for k, v in self._wish_cache.items() if k in keep}

    async def cycle(self) -> int:
        """One scheduling pass; returns how many tasks were assigned. Every decision of the pass
        (assignments and waiting reasons) is stored in one transaction."""
        store = self.book.store
        workers = list(self.fleet.workers.values())
        # When no worker changed since the last pass (state, free capacity, labels), that pass's
        # verdicts still hold: only tasks never looked at (new or requeued) need a look.
        view = fleet_view(workers)
        same_fleet = view == self._last_view
        self._last_view = None  # set again only when this pass completes
        queued = store.queued_tasks(unexplained_only=same_fleet)
        if not same_fleet:
            self._failed = {}
        if not queued:
            if not same_fleet:
                self._wish_cache.clear()
            self._last_view = view
            return 0
        self._prune_wishes(queued)
        total = Amount()
        for w in workers:
            if w.live:
                total = total + w.capacity
        share = {
            owner: dominant_share(use, total) for owner, use in store.usage_by_owner(ON_WORKER_STATES).items()
        }

        by_owner: dict[str, deque[sqlite3.Row]] = defaultdict(deque)
        for row in sorted(queued, key=lambda r: (-int(r["priority"]), float(r["queued_at"]), r["id"])):
            by_owner[row["owner"]].append(row)
        failed = self._failed  # free capacity only shrinks within a pass (and between equal views)
        placements: list[tuple[sqlite3.Row, WorkerEntry]] = []
        reasons: list[tuple[sqlite3.Row, str]] = []
        planned: dict[str, Amount] = {}  # what this pass has handed each worker so far
        while by_owner:
            owner = min(
                by_owner,
                key=lambda o: (
                    share.get(o, 0.0),
                    -int(by_owner[o][0]["priority"]),
                    float(by_owner[o][0]["queued_at"]),
                ),
            )
            row = by_owner[owner].popleft()
            if not by_owner[owner]:
                del by_owner[owner]
            want = amount_of(row)
            labels, disk, runtime = self._wishes(row)
            signature: Signature = (
                want.cpus,
                want.memory,
                want.gpus,
                disk,
                tuple(sorted(labels.items())),
                runtime,
            )
            reason = failed.get(signature)
            if reason is None:
                worker = pick_worker(want, labels, workers, planned, disk=disk, runtime=runtime)
                if worker is not None:
                    placements.append((row, worker))
                    planned[worker.worker_id] = planned.get(worker.worker_id, Amount()) + want
                    share[owner] = share.get(owner, 0.0) + dominant_share(want, total)
                    continue
                reason = explain(want, labels, workers, disk=disk, runtime=runtime)
                failed[signature] = reason
            if row["pending_reason"] != reason:
                reasons.append((row, reason))
        # The verdicts hold for the fleet as it is once these placements are in.
        verdict_view = fleet_view(workers, planned)
        placed = await self.book.assign_many(placements, reasons) if (placements or reasons) else 0
        self._last_view = verdict_view
        return placed

    def update_metrics(self) -> None:
        up = sum(1 for w in self.fleet.workers.values() if w.connected and w.state != pb.WORKER_LOST)
        self.metrics.set_counts(self.book.store.count_by_state(), up)
        self.metrics.set_env_caches(
            {
                w.name: w.env_cache
                for w in self.fleet.workers.values()
                if w.connected and w.env_cache is not None
            }
        )

    async def _round(self) -> None:
        started = time.perf_counter()
        placed = await self.cycle()
        self.cycles += 1
        self.metrics.cycle.observe(time.perf_counter() - started)
        if placed:
            log.debug("placed %d task(s)", placed)
        if time.monotonic() - self._metrics_at >= self.interval:
            self._metrics_at = time.monotonic()
            self.update_metrics()

    async def run(self) -> None:
        await repeat(
            self._round,
            self.interval,
            "scheduling cycle failed; retrying on the next tick",
            wake=self.book.wake,
            settle=0.005,  # let a burst of submissions land in one cycle
            logger=log,
        )


__all__ = ["Scheduler", "explain", "pick_worker"]
