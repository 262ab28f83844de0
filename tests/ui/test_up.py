"""`hivemind up` as a first-time user meets it: the JupyterLab it starts (as root here, as the
README sets up) loads in a browser, signed in to its own pool, and after `up` is stopped and run
again on the same data folder the panel's pool view shows one worker, not two."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from harness import processes

from .conftest import free_port, lab_environment
from .panel_page import SIDEBAR, PanelPage

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _up(data: Path, lab_port: int, env: dict[str, str], log_path: Path, cwd: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "hivemind_nodepool.cli.user",
        "up",
        "--data-dir",
        str(data),
        "--port",
        "0",
        "--executor",
        "local",
        "--lab-port",
        str(lab_port),
    ]
    with open(log_path, "ab") as log:
        return processes.start(command, log, env, cwd=cwd)


def _wait_for(log_path: Path, text: str, process: subprocess.Popen[bytes], timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while text not in (log := log_path.read_text(errors="replace")):
        assert process.poll() is None, log[-3000:]
        assert time.monotonic() < deadline, log[-3000:]
        time.sleep(0.3)
    return log


def _stop(up: subprocess.Popen[bytes], log_path: Path) -> None:
    up.send_signal(signal.SIGTERM)
    assert up.wait(timeout=120) == 128 + signal.SIGTERM, log_path.read_text(errors="replace")[-3000:]


def test_up_twice_then_its_lab_loads_with_one_worker(browser: Any, tmp_path: Path) -> None:
    token = secrets.token_hex(16)
    env = {
        **lab_environment(tmp_path, tmp_path / "lab-settings"),
        "JUPYTER_TOKEN": token,  # the token `up`'s JupyterLab takes, so the browser can open it
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
    }
    work = tmp_path / "work"
    work.mkdir()
    data = tmp_path / "data"
    first_log = tmp_path / "up-1.log"
    up = _up(data, free_port(), env, first_log, work)
    try:
        _wait_for(first_log, "JupyterLab is at", up)
        _stop(up, first_log)
    finally:
        processes.kill(up)
    port = free_port()
    second_log = tmp_path / "up-2.log"
    up = _up(data, port, env, second_log, work)
    context = None
    try:
        log = _wait_for(second_log, "JupyterLab is at", up)
        if os.geteuid() == 0:
            assert "--allow-root" in log, log[-3000:]
        context = browser.new_context(viewport={"width": 1280, "height": 820})
        context.set_default_timeout(60_000)
        panel = PanelPage(context.new_page(), f"http://127.0.0.1:{port}", token)
        panel.open_lab()
        panel.open_panel()
        # `up` signed this user in: the panel opens on the tasks, not on a sign-in form
        panel.page.wait_for_selector(f"{SIDEBAR} .jp-HiveMind-signout")
        panel.show_view("pool")
        cards = panel.page.locator(f"{SIDEBAR} .jp-HiveMind-workerCard")
        cards.first.wait_for()
        panel.page.locator(f'{SIDEBAR} .jp-HiveMind-workerCard[data-state="WORKER_ONLINE"]').wait_for()
        assert cards.count() == 1, cards.all_inner_texts()
        _stop(up, second_log)
    finally:
        if context is not None:
            context.close()
        processes.kill(up)
