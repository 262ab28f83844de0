"""The panel is a prebuilt extension: JupyterLab lists it enabled and OK, it starts without errors in a
browser (JupyterLab's own browser check), and a wheel carries it as shared data with install.json."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO, free_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]

BIN = Path(sys.executable).parent
PREFIX = "share/jupyter/labextensions/hivemind-jupyter/"


def test_labextension_list_shows_it_enabled_and_ok() -> None:
    result = subprocess.run(
        [str(BIN / "jupyter"), "labextension", "list"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "hivemind-jupyter" in line]
    assert lines, result.stdout + result.stderr
    assert "enabled" in lines[0] and "OK" in lines[0], lines


def test_jupyterlab_browser_check(chromium_path: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HIVEMIND_CHROMIUM": chromium_path,
        "HIVEMIND_CONFIG_DIR": str(tmp_path / "hivemind-config"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
    }
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "browser_check.py"),
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={free_port()}",
            f"--ServerApp.root_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "Browser check complete" in output


def test_wheel_ships_the_prebuilt_extension_and_typed_packages(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    wheel = next(tmp_path.glob("hivemind_jupyter-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shared = [n.split(".data/data/", 1)[1] for n in names if ".data/data/" + PREFIX in n]
    assert PREFIX + "install.json" in shared, shared
    assert PREFIX + "package.json" in shared, shared
    assert PREFIX + "schemas/hivemind-jupyter/plugin.json" in shared, shared
    assert any(n.startswith(PREFIX + "static/remoteEntry.") for n in shared), shared
    # the TypeScript sources and node_modules stay out of the wheel
    assert not any("node_modules" in n or n.endswith(".ts") for n in names)
    # typed packages say so, and the layers ship as the folders they are in the tree
    for marker in ("hivemind_nodepool/py.typed", "hivemind_worker/py.typed", "hivemind_jupyter/py.typed"):
        assert marker in names, marker
    for module in ("protocol/states.py", "client/pool_client.py", "pool/scheduler.py", "cli/up.py"):
        assert "hivemind_nodepool/" + module in names, module
