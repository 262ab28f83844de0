"""The pool's background loops (scheduler, liveness, retention): one round every interval, until
cancelled. A round that fails is logged and the next one runs: one bad round must not stop the
pool's housekeeping for good."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from hivemind_nodepool.pool.aio import wait_event
from hivemind_nodepool.protocol.errors import DiskFull

log = logging.getLogger(__name__)


async def repeat(
    one_round: Callable[[], Awaitable[object]],
    interval: float,
    failure: str,
    *,
    wake: asyncio.Event | None = None,
    settle: float = 0.0,
    logger: logging.Logger = log,
) -> None:
    """Await one_round every interval seconds, forever; cancel the task running this to stop it.

    With wake, a round also starts as soon as the event is set (it is cleared before the round);
    settle is how long to wait after a wake-up so that a burst of changes lands in one round.
    An exception from a round is logged to logger (the caller's) with the message failure (a full
    disk as one line, without its traceback)."""
    while True:
        if wake is None:
            await asyncio.sleep(interval)
        else:
            if await wait_event(wake, interval):  # not asyncio.wait_for: it can lose a cancel
                await asyncio.sleep(settle)
            wake.clear()
        try:
            await one_round()
        except DiskFull:  # said once by the disk guard; a traceback every round adds nothing
            logger.warning("%s: the pool's disk is full", failure)
        except Exception:
            logger.exception(failure)
