"""Waiting on the event loop without losing a cancellation.

Python 3.11's `asyncio.wait_for` swallows a cancel that arrives once the awaited thing is done: it
returns the result instead of raising CancelledError. A `while True` loop built on it then runs on
after its task was cancelled, and the pool's SIGTERM shutdown, which awaits its background loops,
waited for the scheduler for ever (until the watchdog's dump). `asyncio.timeout` counts cancels
and never loses one, so every timed wait in the pool goes through here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until the event is set, at most `timeout` seconds (None: no limit); True when it was set."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def within(awaitable: Awaitable[T], timeout: float) -> T:
    """The awaitable's result; TimeoutError past `timeout` seconds (a cancel is never lost)."""
    async with asyncio.timeout(timeout):
        return await awaitable
