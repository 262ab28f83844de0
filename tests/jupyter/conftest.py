"""Fixtures for the Jupyter side: a Jupyter server with the extension, a private config dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tornado.httpclient import HTTPClientError

pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.fixture
def hivemind_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private $HIVEMIND_CONFIG_DIR so no test touches the real credential file."""
    folder = tmp_path / "hivemind-config"
    monkeypatch.setenv("HIVEMIND_CONFIG_DIR", str(folder))
    monkeypatch.delenv("HIVEMIND_POOL", raising=False)
    return folder


@pytest.fixture
def jp_server_config(hivemind_config_dir: Path) -> dict:
    return {"ServerApp": {"jpserver_extensions": {"hivemind_jupyter": True}},
            "HiveMind": {"poll_interval": 0.2}}


async def _call(jp_fetch, method: str, *path: str, body=None, **kwargs):
    if body is not None and not isinstance(body, (str, bytes)):
        body = json.dumps(body)
    try:
        response = await jp_fetch("hivemind", "api", *path, method=method, body=body, **kwargs)
    except HTTPClientError as exc:
        assert exc.response is not None, exc
        return exc.code, json.loads(exc.response.body or b"null")
    return response.code, json.loads(response.body) if response.body else None


@pytest.fixture
def api(jp_fetch, jp_asyncio_loop):
    """api(method, *path, body=..., params=...) -> (status, JSON) against the extension, sync.

    The server runs on pytest-jupyter's loop, so the tests are plain functions that drive it.
    """

    def call(method: str, *path: str, body=None, **kwargs):
        if method in ("POST", "PUT") and body is None:
            body = {}
        return jp_asyncio_loop.run_until_complete(_call(jp_fetch, method, *path, body=body, **kwargs))

    return call
