"""HiveMind worker: joins a NodePool and runs tasks with papermill in locked-down containers."""

from hivemind_nodepool import __version__

__all__ = ["__version__"]
