"""The task's timeout covers its environment build: a build still going when the timeout runs out
is stopped, and the task ends TIMED_OUT saying what to do. The admin's build cap
(environments.BUILD_TIMEOUT) stays an upper bound on any one build, whatever the task's timeout."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .executors.base import Stopper

BUILD_TIMEOUT_KIND = "build-timeout"  # the stopper's kind when the timeout ran out in the build


def build_timeout_message(timeout: float) -> str:
    return (
        f"the task's timeout ({timeout:.0f}s) ran out while its environment was being built (the "
        "timeout covers the build and the run): give it a longer --timeout, fewer packages "
        "(--requirements FILE with only what it needs), or ask your admin for a pre-built image "
        "(--image NAME)"
    )


@contextmanager
def build_deadline(stopper: Stopper, seconds_left: float, timeout: float) -> Iterator[None]:
    """While the block builds the environment, stop the task once seconds_left pass (no limit when
    timeout is 0)."""
    if timeout <= 0:
        yield
        return
    timer = threading.Timer(
        max(seconds_left, 0.0), stopper.stop, args=(BUILD_TIMEOUT_KIND, build_timeout_message(timeout))
    )
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
