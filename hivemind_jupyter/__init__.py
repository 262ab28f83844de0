"""HiveMind for Jupyter: the server extension, the `%%hivemind` magic and its widgets."""

from __future__ import annotations

from typing import Any

from hivemind_nodepool import __version__


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .app import HiveMindExtension

    return [{"module": "hivemind_jupyter.app", "app": HiveMindExtension}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "hivemind-jupyter"}]


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext hivemind_jupyter`: registers `%%hivemind` and `%hivemind`."""
    from .magics import register

    register(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from .magics import unregister

    unregister(ipython)


__all__ = ["__version__", "load_ipython_extension"]
