"""Fixtures of the in-process unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .pool_parts import Pool


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Pool]:
    """A TaskBook, Fleet and Scheduler on a fresh SQLite store in tmp_path."""
    pool = Pool(tmp_path / "pool")
    try:
        yield pool
    finally:
        pool.store.close()
