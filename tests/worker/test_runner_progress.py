"""What the runner counts and says at the start: only the user's cells, and its own phases.

The runner is run here as the executors run it (its own process, its events on a pipe). A
`%%hivemind` cell becomes a notebook of HiveMind's cells around the user's one (pushed variables,
parameters); papermill injects one more for the task's parameters. Counting those showed
"cell 0/2" for a one-cell task and jumped to 50 % when the user's cell began.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hivemind_jupyter.packaging import PUSH_DIR, cell_notebook
from hivemind_worker.executors.base import LineParser
from hivemind_worker.image import RUNNER

from .helpers import notebook


def run_runner(tmp_path: Path, document: bytes, parameters: dict[str, Any]) -> tuple[dict, list]:
    """(the executed notebook, the runner's events) of one run of `document`."""
    task, out = tmp_path / "task", tmp_path / "out"
    (task / PUSH_DIR).mkdir(parents=True)
    out.mkdir()
    (task / "main.ipynb").write_bytes(document)
    (task / PUSH_DIR / "pushed.pickle").write_bytes(pickle.dumps(40))
    request = {"notebook": "main.ipynb", "cwd": str(task), "out_dir": str(out), "parameters": parameters}
    (out / "request.json").write_text(json.dumps(request))
    done = subprocess.run(
        [sys.executable, str(RUNNER), str(out / "request.json")],
        cwd=task,
        capture_output=True,
        timeout=300,
        check=False,
    )
    events = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert events and events[-1]["t"] == "end", done.stderr.decode()[-3000:]
    assert events[-1]["status"] == "ok", events[-1]
    return json.loads((out / "executed.ipynb").read_text()), events


CELL = "answer = pushed + factor\nprint('answer', answer)"


@pytest.mark.parametrize(
    ("document", "counted"),
    [
        # a %%hivemind cell with --push and --param: push, parameters, injected, the user's cell
        (json.dumps(cell_notebook(CELL, {"factor": 1}, ["pushed"])).encode(), 1),
        # a notebook of one cell, run with parameters: papermill injects its cell first
        (notebook("pushed = 40\n" + CELL), 1),
        # the user's own parameters cell is the user's: it counts, the injected one does not
        (notebook("pushed = 40\n" + CELL, parameters="factor = 1"), 2),
    ],
    ids=["hivemind-cell", "one-cell-notebook", "notebook-with-parameters-cell"],
)
def test_only_the_users_cells_are_counted(tmp_path: Path, document: bytes, counted: int) -> None:
    executed, events = run_runner(tmp_path, document, {"factor": 2})
    progress = [(e["done"], e["total"]) for e in events if e["t"] == "progress"]
    assert progress[0] == (0, counted)
    assert progress[-1] == (counted, counted)
    assert all(total == counted for _, total in progress), progress
    # done moves only with a counted cell: one step each, never past the total
    assert [done for done, _ in progress] == list(range(counted + 1))
    assert executed["metadata"]["hivemind"] == {
        "cells_done": counted,
        "cells_total": counted,
        "finished": True,
    }
    # every cell still ran: the user's saw the pushed value and the injected parameter
    assert any("answer 42" in e["text"] for e in events if e["t"] == "stdout")


def test_the_runner_reports_the_kernel_then_running_before_the_first_cell(tmp_path: Path) -> None:
    _, events = run_runner(tmp_path, json.dumps(cell_notebook(CELL, {"factor": 1}, ["pushed"])).encode(), {})
    kinds = [(e["t"], e.get("name") or e.get("done")) for e in events if e["t"] in ("phase", "progress")]
    assert kinds[:3] == [("progress", 0), ("phase", "kernel"), ("phase", "running")]
    first_output = next(i for i, e in enumerate(events) if e["t"] == "stdout")
    running = next(i for i, e in enumerate(events) if e.get("name") == "running")
    assert running < first_output


def test_the_worker_takes_only_the_runners_own_phases_from_the_sandbox() -> None:
    """The runner shares the sandbox with the task's code: a line claiming the worker's phases,
    or carrying details, is not taken as the worker's word."""
    seen: list[dict[str, Any]] = []
    parser = LineParser(seen.append)
    lines = [
        {"t": "phase", "name": "kernel"},
        {"t": "phase", "name": "running", "step": "forged", "cached": True},
        {"t": "phase", "name": "uploading"},
        {"t": "phase", "name": "fetching", "bytes": 1},
        {"t": "phase"},
    ]
    parser.feed(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
    assert seen == [{"t": "phase", "name": "kernel"}, {"t": "phase", "name": "running"}]
