"""The pool's SIGTERM shutdown cancels its background loops and awaits them. It once hung there (the
watchdog dumped the stacks: the event loop idle, the scheduler still cycling), 4 times in 60 runs of
"submit, cancel during upload, SIGTERM": a worker's stream had just closed, which wakes the
scheduler, and Python 3.11's asyncio.wait_for returned the wake-up instead of raising the cancel
that came in the same moment. These tests send the cancel in exactly that moment."""

from __future__ import annotations

import asyncio

import pytest

from hivemind_nodepool.pool.aio import wait_event
from hivemind_nodepool.pool.feed import TaskWatcher
from hivemind_nodepool.pool.server import stop_loops
from hivemind_nodepool.proto import nodepool_pb2 as pb

from .pool_parts import Pool

STEPS = range(4)  # loop iterations between the wake-up and the cancel


async def _ends_when_cancelled(task: asyncio.Task[object]) -> None:
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    if not done:  # the old behaviour: it runs on; stop it for good before failing
        while not task.done():
            task.cancel()
            await asyncio.sleep(0.01)
        pytest.fail("the loop ran on after it was cancelled")
    assert task.cancelled()


@pytest.mark.parametrize("steps", STEPS)
async def test_the_scheduler_loop_ends_when_cancelled_as_it_is_woken(parts: Pool, steps: int) -> None:
    loop = asyncio.create_task(parts.scheduler.run())
    await asyncio.sleep(0.05)
    parts.book.wake.set()  # what a worker's stream closing does
    for _ in range(steps):
        await asyncio.sleep(0)
    await _ends_when_cancelled(loop)


@pytest.mark.parametrize("steps", STEPS)
async def test_a_timed_wait_never_loses_a_cancel(steps: int) -> None:
    event = asyncio.Event()

    async def forever() -> None:
        while True:
            await wait_event(event, 1.0)
            event.clear()

    loop = asyncio.create_task(forever())
    await asyncio.sleep(0.01)
    event.set()
    for _ in range(steps):
        await asyncio.sleep(0)
    await _ends_when_cancelled(loop)


@pytest.mark.parametrize("steps", STEPS)
async def test_a_task_feed_wait_ends_when_cancelled_as_a_change_comes(steps: int) -> None:
    watcher = TaskWatcher("alice", "alice", limit=10)

    async def serve() -> None:
        while True:
            await watcher.next(timeout=1.0)

    loop = asyncio.create_task(serve())
    await asyncio.sleep(0.01)
    watcher.offer(pb.Task(id="t-changed"))
    for _ in range(steps):
        await asyncio.sleep(0)
    await _ends_when_cancelled(loop)


async def test_stop_loops_names_and_recancels_a_loop_that_swallows_its_cancel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(3600)  # swallows the first cancel; the second ends it

    tasks = [asyncio.create_task(stubborn(), name="stubborn")]
    await asyncio.sleep(0)
    await asyncio.wait_for(stop_loops(tasks, patience=0.2), timeout=10)
    assert tasks[0].done()
    assert "background loop stubborn did not stop when cancelled" in caplog.text
