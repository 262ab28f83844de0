"""Test harness: a real pool as a subprocess, and a fake worker that speaks the gateway protocol."""

from .fake_worker import FakeWorker
from .pool import PoolProcess

__all__ = ["FakeWorker", "PoolProcess"]
