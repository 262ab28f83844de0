"""HiveMind for Jupyter: the server extension, the `%%hivemind` magic and its widgets."""

from hivemind_nodepool import __version__

__all__ = ["__version__"]
