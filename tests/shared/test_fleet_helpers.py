"""The pool's shared worker helpers: an entry from its stored row, the one "present" predicate
(online or draining), and the background loop every housekeeping task runs in."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time

import pytest

from hivemind_nodepool.pool.fleet import Amount, Fleet, WorkerEntry
from hivemind_nodepool.pool.loops import repeat
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.states import PRESENT_WORKER_STATES, worker_present

FACTS = pb.MachineFacts(hostname="node-1", cpu_cores=8, memory_bytes=16 * 1024**3, labels={"zone": "a"})


def worker_row(state: int) -> sqlite3.Row:
    db = sqlite3.connect(":memory:")
    db.row_factory = sqlite3.Row
    db.execute("CREATE TABLE workers (id TEXT, name TEXT, facts BLOB, state INTEGER, last_heartbeat_at REAL)")
    db.execute(
        "INSERT INTO workers VALUES (?, ?, ?, ?, ?)",
        ("w-1", "node-1", FACTS.SerializeToString(), state, 123.5),
    )
    row: sqlite3.Row = db.execute("SELECT * FROM workers").fetchone()
    return row


def test_an_entry_from_its_row() -> None:
    entry = WorkerEntry.from_row(worker_row(pb.WORKER_DRAINING))
    assert (entry.worker_id, entry.name, entry.state) == ("w-1", "node-1", pb.WORKER_DRAINING)
    assert entry.facts == FACTS
    assert entry.last_heartbeat_at == 123.5
    assert entry.capacity == Amount(8.0, 16 * 1024**3, 0)
    assert entry.labels == {"zone": "a"}
    assert not entry.connected and not entry.allocations


def test_an_entry_from_its_row_in_another_state() -> None:
    assert (
        WorkerEntry.from_row(worker_row(pb.WORKER_OFFLINE), state=pb.WORKER_ONLINE).state == pb.WORKER_ONLINE
    )


@pytest.mark.parametrize("state", pb.WorkerState.values())
def test_present_means_online_or_draining(state: int) -> None:
    expected = state in (pb.WORKER_ONLINE, pb.WORKER_DRAINING)
    assert worker_present(state) is expected
    assert (state in PRESENT_WORKER_STATES) is expected
    entry = WorkerEntry("w-1", "node-1", FACTS, state=state)
    assert entry.present is expected
    assert entry.live is False  # no stream open
    fleet = Fleet()
    fleet.add(entry)
    fleet.attach(entry)
    assert entry.live is expected
    assert entry.schedulable is (state == pb.WORKER_ONLINE)
    assert fleet.online() == ([entry] if expected else [])


async def test_the_loop_runs_each_interval_and_survives_a_failing_round(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rounds: list[int] = []

    async def one_round() -> None:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise RuntimeError("a bad round")

    logger = logging.getLogger("tests.loop")
    task = asyncio.create_task(repeat(one_round, 0.01, "the round failed", logger=logger))
    deadline = time.monotonic() + 5
    while len(rounds) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(rounds) >= 3
    failures = [r for r in caplog.records if r.message == "the round failed"]
    assert len(failures) == 1
    assert failures[0].name == "tests.loop" and failures[0].exc_info is not None


async def test_the_loop_stops_promptly_when_cancelled() -> None:
    async def one_round() -> None:
        raise AssertionError("never reached: the interval is an hour")

    for wake in (None, asyncio.Event()):
        task = asyncio.create_task(repeat(one_round, 3600, "failed", wake=wake))
        await asyncio.sleep(0.01)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 0.5


async def test_a_wake_up_starts_a_round_at_once_and_is_cleared() -> None:
    wake = asyncio.Event()
    ran = asyncio.Event()
    seen_set: list[bool] = []

    async def one_round() -> None:
        seen_set.append(wake.is_set())
        ran.set()

    task = asyncio.create_task(repeat(one_round, 3600, "failed", wake=wake, settle=0.01))
    wake.set()
    await asyncio.wait_for(ran.wait(), timeout=2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen_set == [False]
