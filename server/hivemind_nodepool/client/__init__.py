"""The one client library of the NodePool, used by the worker, the Jupyter side and the CLIs:
`PoolClient`, its channel, the saved credential and turning folders into task submissions."""

from hivemind_nodepool.client.pool_client import PoolClient, WorkerStream

__all__ = ["PoolClient", "WorkerStream"]
