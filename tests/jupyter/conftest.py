"""Fixtures for the Jupyter side: a Jupyter server with the extension, a private config dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_jupyter.jupyter_server as _jupyter_server_plugin
from tornado.httpclient import HTTPClientError

# pytest-jupyter's fixtures for these tests only: loading it as a plugin would also apply its
# event-loop hooks to every other test in the suite.
globals().update(
    {
        name: value
        for name, value in vars(_jupyter_server_plugin).items()
        if type(value).__name__ == "FixtureFunctionDefinition"
    }
)


@pytest.fixture
def hivemind_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private $HIVEMIND_CONFIG_DIR so no test touches the real credential file."""
    folder = tmp_path / "hivemind-config"
    monkeypatch.setenv("HIVEMIND_CONFIG_DIR", str(folder))
    monkeypatch.delenv("HIVEMIND_POOL", raising=False)
    return folder


@pytest.fixture
def jp_server_config(hivemind_config_dir: Path) -> dict:
    return {
        "ServerApp": {"jpserver_extensions": {"hivemind_jupyter": True}},
    }


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


USER = "ada"
PASSWORD = "ada-password-1"


@pytest.fixture
def signed_in(pool, hivemind_config_dir: Path):
    """The `pool` with user ada, signed in through the credential file (as `hivemind login` does)."""
    from hivemind_jupyter.config import HiveMind
    from hivemind_jupyter.pool import PoolConnector

    pool.add_user(USER, PASSWORD)
    PoolConnector(HiveMind()).sign_in(USER, PASSWORD, pool.address)
    return pool


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hivemind_config_dir: Path):
    """A real IPython shell with the extension loaded, working in a fresh folder."""
    from IPython.core.interactiveshell import InteractiveShell

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "hivemind_jupyter")
    ip.run_line_magic("config", "HiveMind.interrupt_action = 'cancel'")
    yield ip
    ip.run_line_magic("unload_ext", "hivemind_jupyter")
    ip.config.pop("HiveMind", None)  # the shell is a process-wide singleton
    for name in [n for n in ip.user_ns if not n.startswith("_")]:
        if name not in ("In", "Out", "exit", "quit", "get_ipython"):
            ip.user_ns.pop(name, None)
