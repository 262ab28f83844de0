"""%%hivemind cells in a real kernel (as JupyterLab runs them) against a real pool and worker:
interrupting one (SIGINT, as the Interrupt button sends it) prints one line and no traceback;
HiveMind's notices arrive as their own quiet outputs, never as the cell's stderr."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.worker import WorkerProcess
from jupyter_client.manager import KernelManager

pytestmark = pytest.mark.slow

CELL = "%%hivemind --memory 512M\nimport time\nprint('started', flush=True)\ntime.sleep(120)\n"


def _texts(message: dict[str, Any]) -> list[str]:
    """What one iopub message puts in the cell, as text."""
    kind, content = message["msg_type"], message["content"]
    if kind == "stream":
        return [content["text"]]
    if kind == "error":
        return ["\n".join(content["traceback"]) or f"{content['ename']}: {content['evalue']}"]
    if kind in ("display_data", "execute_result", "update_display_data"):
        return [str(content["data"].get("text/plain", ""))]
    return []


def _run(client: Any, code: str, until: Any, timeout: float = 120) -> list[dict[str, Any]]:
    """Execute code; iopub messages of it until `until(messages)` is true or the kernel is idle."""
    msg_id = client.execute(code)
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            message = client.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        seen.append(message)
        if until(seen):
            return seen
        if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
            return seen
    raise AssertionError(f"no end within {timeout} s: {[m['msg_type'] for m in seen]}")


def _idle(messages: list[dict[str, Any]]) -> bool:
    last = messages[-1]
    return last["msg_type"] == "status" and last["content"]["execution_state"] == "idle"


@pytest.fixture
def kernel(signed_in, tmp_path: Path) -> Iterator[tuple[KernelManager, Any]]:
    """A real kernel working in a fresh folder with the extension loaded; (manager, client)."""
    work = tmp_path / "kernel-work"
    work.mkdir()
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(cwd=str(work))  # the environment (HIVEMIND_CONFIG_DIR) is inherited
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        loaded = _run(client, "%load_ext hivemind_jupyter", _idle)
        assert not [m for m in loaded if m["msg_type"] == "error"], loaded
        yield manager, client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def test_interrupting_the_kernel_prints_one_line(kernel, local_worker) -> None:
    manager, client = kernel
    started = _run(client, CELL, lambda seen: any("started" in t for m in seen for t in _texts(m)))
    msg_id = started[0]["parent_header"]["msg_id"]
    manager.interrupt_kernel()
    rest: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while not rest or not _idle(rest):
        assert time.monotonic() < deadline, [m["msg_type"] for m in rest]
        try:
            message = client.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        if message["parent_header"].get("msg_id") == msg_id:
            rest.append(message)
    shown = "\n".join(t for m in started + rest for t in _texts(m))
    lines = [line for line in shown.splitlines() if "ancel" in line]
    assert len(lines) == 1 and lines[0].startswith("Cancelled on the pool after "), shown
    for internal in ("Traceback", "handle.py", "queue.py", "threading.py", "magics.py"):
        assert internal not in shown, shown
    errors = [m["content"] for m in rest if m["msg_type"] == "error"]
    assert len(errors) == 1 and errors[0]["ename"] == "TaskInterrupted", errors
    # The kernel is still usable.
    after = _run(client, "print(6 * 7)", _idle)
    assert any("42" in t for m in after for t in _texts(m)), after


def test_notices_are_not_the_cells_stderr(kernel, signed_in) -> None:
    _manager, client = kernel
    # A worker whose live-output cap is tiny: past it the worker sends a NOTICE that it truncated.
    with WorkerProcess(signed_in, executor="local", name="tight", extra_args=["--max-output-bytes", "2K"]):
        code = "%%hivemind --memory 512M\nfor i in range(200):\n    print('line', i, 'x' * 40)\n"
        messages = _run(client, code, _idle)
    assert not [m for m in messages if m["msg_type"] == "error"], messages
    stderr = "".join(
        m["content"]["text"]
        for m in messages
        if m["msg_type"] == "stream" and m["content"]["name"] == "stderr"
    )
    assert "truncated" not in stderr and "[hivemind]" not in stderr, stderr
    notices = [
        m["content"]["data"]
        for m in messages
        if m["msg_type"] == "display_data" and "hivemind-notice" in m["content"]["data"].get("text/html", "")
    ]
    assert any("output truncated" in notice["text/plain"] for notice in notices), notices
