"""pytest fixtures for a real pool: `pool` (function-scoped, always stopped at the end)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .pool import PoolProcess


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[PoolProcess]:
    with PoolProcess(tmp_path / "pool") as process:
        yield process
