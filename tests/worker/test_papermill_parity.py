"""The pool ends a notebook as plain papermill ends it: the same outcome and the same error name,
over a corpus of the ways a notebook can end (success, exceptions, `sys.exit` with its codes, a
dead kernel, an empty notebook, one without a parameters cell, an old nbformat)."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from harness.worker import WorkerProcess
from nbformat import v3, v4

from hivemind_nodepool.client import PoolClient
from hivemind_nodepool.proto import nodepool_pb2 as pb

from .helpers import bundle, stdout_of, submit, user, wait_state

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PARAMETERS = {"n": 2}
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def _v4(*sources: str, parameters: bool = True) -> str:
    document = v4.new_notebook()
    if parameters:
        document.cells.append(v4.new_code_cell("n = 1", metadata={"tags": ["parameters"]}))
    document.cells.extend(v4.new_code_cell(source) for source in sources)
    document.metadata["kernelspec"] = KERNELSPEC
    return nbformat.writes(document)


def _v3(source: str) -> str:
    document = v3.new_notebook()
    sheet = v3.new_worksheet()
    sheet.cells.append(v3.new_code_cell(input=source))
    document.worksheets.append(sheet)
    document.metadata["kernelspec"] = KERNELSPEC
    return str(v3.writes_json(document))


CORPUS = {
    "success": _v4("print('ok', n)"),
    "two cells": _v4("print('before')", "print('after')"),  # the control: the next cell runs
    "exception": _v4("raise ValueError('bad')"),
    "sys.exit()": _v4("import sys\nsys.exit()", "print('after')"),
    "sys.exit(0)": _v4("import sys\nsys.exit(0)", "print('after')"),
    "sys.exit(1)": _v4("import sys\nsys.exit(1)", "print('after')"),
    "sys.exit('msg')": _v4("import sys\nsys.exit('stopped on purpose')"),
    "raise SystemExit('msg')": _v4("raise SystemExit('msg')"),
    "kernel death": _v4("import os\nos._exit(1)"),
    "empty notebook": json.dumps(
        {"cells": [], "metadata": {"kernelspec": KERNELSPEC}, "nbformat": 4, "nbformat_minor": 5}
    ),
    "no parameters cell": _v4("print('hi', n)", parameters=False),
    "nbformat 3": _v3("print('old format', n)"),
}


Outcome = tuple[str, str, bool]  # state, error name, whether the cell after a `sys.exit` ran


def papermill_outcome(text: str, folder: Path) -> Outcome:
    """(state, error name, ran on) of plain local papermill on the notebook, as its caller sees it."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    folder.mkdir(parents=True)
    (folder / "in.ipynb").write_text(text)
    try:
        papermill.execute_notebook(
            str(folder / "in.ipynb"),
            str(folder / "out.ipynb"),
            parameters=PARAMETERS,
            kernel_name="python3",
            progress_bar=False,
        )
    except PapermillExecutionError as exc:
        return "FAILED", exc.ename, _ran_on(folder / "out.ipynb")
    except Exception as exc:  # a dead kernel, for one: papermill raises what nbclient raised
        return "FAILED", type(exc).__name__, _ran_on(folder / "out.ipynb")
    return "SUCCEEDED", "", _ran_on(folder / "out.ipynb")


def _ran_on(executed: Path) -> bool:
    if not executed.exists():
        return False
    document = nbformat.read(executed, as_version=4)
    return any(
        "after" in str(output.get("text", ""))
        for cell in document.cells
        for output in cell.get("outputs", [])
    )


def pool_outcome(client: PoolClient, task: pb.Task) -> Outcome:
    """(state, error name, ran on) of the task: the name is the error line's `Name:` prefix."""
    state = pb.TaskState.Name(task.state)
    ran_on = "after" in stdout_of(list(client.watch(task.id, follow=False)))
    if task.state == pb.SUCCEEDED:
        return state, "", ran_on
    return state, task.error.split(":", 1)[0].strip(), ran_on


def test_the_pool_ends_each_notebook_as_papermill_does(
    pool, docker_worker: WorkerProcess, tmp_path: Path
) -> None:
    alice = user(pool)
    tasks = {
        name: submit(alice, bundle(text.encode()), parameters=PARAMETERS) for name, text in CORPUS.items()
    }
    local = {
        name: papermill_outcome(text, tmp_path / f"local-{index}")
        for index, (name, text) in enumerate(CORPUS.items())
    }
    pooled = {
        name: pool_outcome(alice, wait_state(alice, task.id, timeout=300)) for name, task in tasks.items()
    }
    for name in CORPUS:
        print(f"{name:26s} papermill {local[name]}  pool {pooled[name]}")
    differ = {name: (local[name], pooled[name]) for name in CORPUS if local[name] != pooled[name]}
    assert not differ, f"the pool and papermill disagree (papermill, pool): {differ}"
    # The corpus covers both outcomes, and more than one way to fail.
    assert {state for state, _, _ in local.values()} == {"SUCCEEDED", "FAILED"}
    assert len({error for _, error, _ in local.values() if error}) >= 3
    assert local["two cells"][2] and not local["sys.exit(0)"][2]
