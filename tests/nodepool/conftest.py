"""Fixtures of the result tests: a signed-in user and a fake worker on the test's pool."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import FakeWorker, PoolProcess

from hivemind_nodepool.client import PoolClient

from .helpers import ALICE_PASSWORD as PASSWORD


@pytest.fixture
def alice(pool: PoolProcess) -> Iterator[PoolClient]:
    """User alice, signed in."""
    pool.add_user("alice", PASSWORD)
    client = pool.login("alice", PASSWORD)
    yield client
    client.close()


@pytest.fixture
def worker(pool: PoolProcess) -> Iterator[FakeWorker]:
    """A fake worker named runner, connected."""
    fake = FakeWorker(pool.address, pool.join_token(), name="runner").connect()
    yield fake
    fake.close()
