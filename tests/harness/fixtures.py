"""pytest fixtures for a real pool: `pool` (function-scoped, always stopped at the end), and the
per-test stop of every harness process the test left running."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import processes
from .pool import PoolProcess

log = logging.getLogger(__name__)


@pytest.fixture(autouse=True)
def _stop_what_the_test_started() -> Iterator[None]:
    """Whatever a test started through the harness and did not stop is stopped when it ends.
    Set up before the test's own function-scoped fixtures, so it tears down after them; processes
    of wider-scoped fixtures were started before it looked, and are theirs to stop."""
    before = list(processes.STARTED)
    yield
    for line in processes.stop_all_started(keep=before):
        log.warning("the test left this process running; stopped it: %s", line)


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[PoolProcess]:
    with PoolProcess(tmp_path / "pool") as process:
        yield process
