"""HiveMind NodePool: the server, its wire protocol and the one client library everybody uses."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hivemind-jupyter")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

__all__ = ["__version__"]
