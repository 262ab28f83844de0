"""Real parts for the panel's browser tests: a pool, a worker, JupyterLab, and Chromium.

Everything here is module-scoped: one pool, one worker (the local executor, so no image build is
needed), one JupyterLab and one Chromium serve all the scenarios of a test module, in order, like
one person using the panel. Each piece is stopped at the end even when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness.pool import PoolProcess

from hivemind_nodepool.protocol.errors import HiveMindError
from hivemind_nodepool.protocol.states import UNFINISHED_STATES

REPO = Path(__file__).resolve().parents[2]
USER, PASSWORD = "ada", "ada-password-1"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def notebook(*sources: str) -> str:
    cells = [
        {
            "cell_type": "code",
            "execution_count": None,
            "id": f"c{i}",
            "metadata": {},
            "outputs": [],
            "source": source,
        }
        for i, source in enumerate(sources)
    ]
    cells[0]["metadata"]["tags"] = ["parameters"]
    return json.dumps(
        {
            "cells": cells,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4,
            "nbformat_minor": 5,
        }
    )


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    settings_dir: Path
    log_path: Path

    def api(self, method: str, path: str, body: object | None = None) -> tuple[int, object]:
        """Calls Jupyter's REST API with the token (for setup only: the tests act through the page)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read()
                return response.status, json.loads(text) if text else None
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-20_000:]


def lab_environment(ui_tmp: Path, settings_dir: Path) -> dict[str, str]:
    """The environment of a JupyterLab for these tests: private HiveMind config, settings and
    workspaces, no news prompt, and this checkout's build of the panel."""
    # no "get Jupyter news?" prompt over the panel: JupyterLab must not try to go online here
    notification = settings_dir / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True, exist_ok=True)
    notification.write_text('{"fetchNews": "false"}')
    env = {
        **os.environ,
        "HIVEMIND_CONFIG_DIR": str(ui_tmp / "hivemind-config"),
        "JUPYTERLAB_SETTINGS_DIR": str(settings_dir),
        "JUPYTERLAB_WORKSPACES_DIR": str(ui_tmp / "lab-workspaces"),
    }
    # Serve this checkout's build of the panel (when it has one), not whichever build the
    # environment's share/jupyter/labextensions links to: JUPYTER_PATH comes first on the path.
    build = REPO / "hivemind_jupyter" / "labextension"
    if (build / "package.json").is_file():
        extensions = ui_tmp / "jupyter-path" / "labextensions"
        extensions.mkdir(parents=True, exist_ok=True)
        link = extensions / "hivemind-jupyter"
        if not link.is_symlink():
            link.symlink_to(build, target_is_directory=True)
        env["JUPYTER_PATH"] = os.pathsep.join(
            p for p in (str(extensions.parent), os.environ.get("JUPYTER_PATH", "")) if p
        )
    return env


@pytest.fixture(scope="module")
def ui_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ui")


@pytest.fixture(scope="module")
def ui_pool(ui_tmp: Path) -> Iterator[PoolProcess]:
    with PoolProcess(ui_tmp / "pool") as process:
        process.add_user(USER, PASSWORD)
        yield process


@pytest.fixture(scope="module")
def ui_worker(ui_pool: PoolProcess, ui_tmp: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real `hivemind-worker` with the local executor (a venv over the worker's own packages)."""
    log_path = ui_tmp / "worker.log"
    command = [
        sys.executable,
        "-m",
        "hivemind_worker.cli",
        "run",
        "--pool",
        ui_pool.address,
        "--join-token",
        ui_pool.join_token(),
        "--executor",
        "local",
        "--state-dir",
        str(ui_tmp / "worker-state"),
        "--name",
        "lab-box",
        "--max-cpus",
        "2",
        "--max-memory",
        "4G",
        "--heartbeat-interval",
        "1",
    ]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        with ui_pool.admin() as admin:
            deadline = time.monotonic() + 60
            while not any(w.name == "lab-box" and w.state == 1 for w in admin.list_workers()):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the worker did not come online:\n{log_path.read_text()[-5000:]}")
                time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            _cancel_unfinished(ui_pool)  # an idle worker stops at once and unmounts its task disks
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _cancel_unfinished(pool: PoolProcess) -> None:
    """Cancel what the module's tests left running: the worker's drain then ends as soon as their
    sandboxes are gone, well before the fixture's kill (which would leave a task disk mounted)."""
    with pool.admin() as admin:
        for task in list(admin.iter_tasks(states=UNFINISHED_STATES, all_users=True)):
            with contextlib.suppress(HiveMindError):  # it may have ended meanwhile
                admin.cancel_task(task.id)


@pytest.fixture(scope="module")
def lab(ui_pool: PoolProcess, ui_tmp: Path) -> Iterator[Lab]:
    """JupyterLab with the extension on a free port, a token, and private config and settings."""
    root = ui_tmp / "work"
    (root / "analysis").mkdir(parents=True)
    (root / "hello.ipynb").write_text(
        notebook(
            "greeting = 'hello'",
            "import time\nfor i in range(4):\n    print(f'{greeting} {i}', flush=True)\n    time.sleep(0.5)",
            "import os\nos.makedirs('outputs', exist_ok=True)\n"
            "open('outputs/answer.txt', 'w').write('42')\nprint('done')",
        )
    )
    (root / "slow.ipynb").write_text(
        notebook(
            "seconds = 600",
            "import time\nprint('sleeping', flush=True)\ntime.sleep(seconds)",
        )
    )
    (root / "analysis" / "main.ipynb").write_text(notebook("x = 1", "print(x + 1)"))
    (root / "with-secret").mkdir()
    (root / "with-secret" / "main.ipynb").write_text(notebook("x = 1", "print(x)"))
    (root / "with-secret" / ".env").write_text("API_KEY=not-for-the-pool\n")
    (root / "two").mkdir()
    (root / "two" / "a.ipynb").write_text(notebook("x = 1"))
    (root / "two" / "b.ipynb").write_text(notebook("x = 2"))
    token = secrets.token_hex(16)
    port = free_port()
    settings_dir = ui_tmp / "lab-settings"
    env = {**lab_environment(ui_tmp, settings_dir), "HIVEMIND_POOL": ui_pool.address}
    log_path = ui_tmp / "jupyterlab.log"
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        # window.jupyterapp: a test asks a restored tab's session whether it is done starting
        "--LabApp.expose_app_in_browser=True",
    ]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    server = Lab(f"http://127.0.0.1:{port}", token, root, settings_dir, log_path)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{server.log()}")
            try:
                if server.api("GET", "/api/status")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not start:\n{server.log()}")
            time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser(chromium_path: str, ui_tmp: Path) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield instance
        finally:
            instance.close()
