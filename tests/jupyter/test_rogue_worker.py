"""A rogue worker against the user's kernel: a real pool, the real `%%hivemind` magic in a real
IPython shell, and a worker that speaks the real protocol but sends what an attacker would: a
pickle that runs code when loaded, variables nobody asked for, JavaScript and script-laden HTML.
By default none of it runs in the kernel or reaches the browser as trusted output; the user's
explicit opt-ins (--pull-pickle, c.HiveMind.trusted_pools) do let it through, which shows the
checks look at the right thing."""

from __future__ import annotations

import base64
import json
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import FakeWorker, PoolProcess
from IPython.utils.capture import capture_output

from hivemind_nodepool.proto import nodepool_pb2 as pb

pytestmark = pytest.mark.slow

HOSTILE_HTML = (
    '<b>rogue-visible</b><img src="x" onerror="window.__pwned=1">'
    '<script>window.__pwned=2</script><a href="javascript:window.__pwned=3">link</a>'
)


class RunsCode:
    """Pickles as a call of exec(code): what a worker owner would send back as a 'variable'."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (self.code,))


def hostile_pickle(marker: Path) -> str:
    code = f"open({str(marker)!r}, 'w').write('the worker ran code in your kernel')"
    return base64.b64encode(pickle.dumps(RunsCode(code))).decode()


def display(data: dict[str, Any], kind: str = "display_data") -> dict[str, Any]:
    output: dict[str, Any] = {"output_type": kind, "data": data, "metadata": {}}
    if kind == "execute_result":
        output["execution_count"] = 1
    return output


def result_zip(path: Path, variables: dict[str, Any]) -> Path:
    """The result a rogue worker uploads: the executed cell with hostile outputs, and variables."""
    outputs = [
        display({"text/html": HOSTILE_HTML, "text/plain": "html"}),  # also sent live, below
        display({"application/javascript": "window.__pwned=4", "text/plain": "<Javascript>"}),
        display({"text/html": HOSTILE_HTML.replace("rogue-visible", "rogue-later")}, "execute_result"),
    ]
    cell = {
        "cell_type": "code",
        "execution_count": 1,
        "id": "c",
        "metadata": {"tags": ["hivemind-cell"]},
        "outputs": outputs,
        "source": "",
    }
    notebook = {"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("main.ipynb", json.dumps(notebook))
        archive.writestr(".hivemind/variables.json", json.dumps(variables))
    return path


@pytest.fixture
def rogue(signed_in: PoolProcess) -> Iterator[FakeWorker]:
    token = signed_in.admin().create_join_token(ttl_seconds=600).token
    worker = FakeWorker(signed_in.address, token, name="rogue").connect()
    try:
        yield worker
    finally:
        worker.close()


def run_on_rogue(
    shell: Any, rogue: FakeWorker, options: str, variables: dict[str, Any], tmp_path: Path
) -> Any:
    """Submit a cell with the magic, let the rogue worker answer it, and collect its result."""
    with capture_output():
        handle = shell.run_cell_magic("hivemind", f"--no-wait --memory 512M {options}", "answer = 42\n")
    assignment = rogue.next_assignment(timeout=30)
    batch = pb.EventBatch(task_id=assignment.task_id, attempt=assignment.attempt)
    live = display({"text/html": HOSTILE_HTML, "text/plain": "html"})
    batch.events.append(pb.TaskEvent(seq=1, kind=pb.TaskEvent.DISPLAY, data_json=json.dumps(live)))
    rogue.client.report_events(batch)
    rogue.run_to_success(assignment, result_zip(tmp_path / f"{assignment.task_id}.zip", variables))
    with capture_output() as captured:
        handle.result()
    return captured


def test_pulled_pickles_and_unasked_variables_never_run(signed_in, rogue, shell, tmp_path: Path):
    asked, unasked = tmp_path / "asked-ran", tmp_path / "unasked-ran"
    variables = {
        "answer": {"type": "builtins.int", "pickle": hostile_pickle(asked)},
        "print": {"type": "builtins.int", "json": "shadows a builtin"},
        "other": {"type": "x", "pickle": hostile_pickle(unasked)},
    }
    captured = run_on_rogue(shell, rogue, "--pull answer", variables, tmp_path)
    assert not asked.exists() and not unasked.exists(), "a worker's pickle ran code in the kernel"
    assert "answer" not in shell.user_ns and "other" not in shell.user_ns
    assert "print" not in shell.user_ns  # not asked for: not set, even in a safe form
    assert "variable answer did not come back" in captured.stdout and "--pull-pickle" in captured.stdout
    # the outputs, live and from the result, are shown made safe
    shown = [output.data for output in captured.outputs]
    html = [data["text/html"] for data in shown if "text/html" in data]
    assert any("rogue-visible" in text for text in html) and any("rogue-later" in text for text in html)
    assert not any(mark in text for text in html for mark in ("onerror", "<script", "javascript:"))
    assert not any("application/javascript" in data for data in shown)
    assert any("not shown: application/javascript" in data.get("text/plain", "") for data in shown)


def test_no_pull_loads_no_variables(signed_in, rogue, shell, tmp_path: Path):
    marker = tmp_path / "ran"
    variables = {"answer": {"type": "builtins.int", "pickle": hostile_pickle(marker)}, "x": {"json": 1}}
    captured = run_on_rogue(shell, rogue, "", variables, tmp_path)
    assert not marker.exists() and "answer" not in shell.user_ns and "x" not in shell.user_ns
    assert "did not come back" not in captured.stdout + captured.stderr


def test_the_users_explicit_trust_lets_them_through(signed_in, rogue, shell, tmp_path: Path):
    """--pull-pickle loads the pickle it was asked for (and only that one); a pool listed in
    c.HiveMind.trusted_pools shows the worker's HTML and JavaScript as they are."""
    asked, unasked = tmp_path / "asked-ran", tmp_path / "unasked-ran"
    variables = {
        "answer": {"type": "builtins.int", "pickle": hostile_pickle(asked)},
        "other": {"type": "x", "pickle": hostile_pickle(unasked)},
    }
    run_on_rogue(shell, rogue, "--pull answer --pull-pickle", variables, tmp_path)
    assert asked.exists() and not unasked.exists()
    shell.run_line_magic("config", f"HiveMind.trusted_pools = [{signed_in.address!r}]")
    captured = run_on_rogue(shell, rogue, "", {}, tmp_path)
    shown = [output.data for output in captured.outputs]
    assert any(data.get("text/html") == HOSTILE_HTML for data in shown)
    assert any(data.get("application/javascript") == "window.__pwned=4" for data in shown)
