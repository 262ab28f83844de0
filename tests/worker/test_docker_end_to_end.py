"""A notebook with parameters and a requirements.txt runs in Docker through a real pool and worker."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from harness.env_worker import EnvWorker

from hivemind_nodepool.proto import nodepool_pb2 as pb

from .helpers import (
    EXTRA_PACKAGE,
    bundle,
    notebook,
    outputs_of,
    phase_details_of,
    phase_names,
    result_files,
    stdout_of,
    submit,
    task_containers,
    user,
    wait_state,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CELLS = (
    "import time, hmdemo_delta\nfor i in range(4):\n    print('tick', i, flush=True)\n    time.sleep(0.4)\n",
    "from IPython.display import HTML, display\n"
    "display(HTML('<b>bold</b>'))\n"
    "import os\n"
    "os.makedirs('outputs', exist_ok=True)\n"
    "open('outputs/answer.toml', 'w').write(f'answer = {factor * 21}\\n')\n"
    "answer = factor * 21\n"
    "answer",
)


def test_parameters_requirements_live_output_and_image_reuse(
    pool, env_worker: EnvWorker, tmp_path: Path
) -> None:
    alice = user(pool)
    # A comment no earlier run wrote: this run builds the environment, and the next reuses it.
    requirements = f"{EXTRA_PACKAGE}  # {os.urandom(6).hex()}\n".encode()
    data = bundle(notebook(*CELLS, parameters="factor = 1"), {"requirements.txt": requirements})
    task = submit(alice, data, parameters={"factor": 2}, pull_variables=["answer"], timeout=600)

    seen: list[tuple[float, pb.TaskEvent]] = []
    for event in alice.watch(task.id, follow=True):
        seen.append((time.monotonic(), event))
    events = [e for _, e in seen]
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), "gaps or duplicates"
    final = wait_state(alice, task.id)
    assert final.state == pb.SUCCEEDED, (final.error, final.traceback, env_worker.process.log()[-3000:])

    # Output arrived while the notebook ran: the ticks are spread out in time, before the end.
    ticks = [(at, e) for at, e in seen if e.kind == pb.TaskEvent.STDOUT and "tick" in e.text]
    assert "".join(e.text for _, e in ticks).count("tick") == 4
    assert len(ticks) >= 2, "the ticks came in one piece, not as they were printed"
    end_at = next(at for at, e in seen if e.kind == pb.TaskEvent.STATE and e.state == pb.SUCCEEDED)
    assert ticks[0][0] < end_at
    displays = [json.loads(e.data_json) for e in events if e.kind == pb.TaskEvent.DISPLAY]
    assert any("<b>bold</b>" in d.get("data", {}).get("text/html", "") for d in displays)
    assert any(d.get("output_type") == "execute_result" and d["data"]["text/plain"] == "42" for d in displays)
    progress = [e.progress for e in events if e.kind == pb.TaskEvent.PROGRESS]
    # the notebook's own cells (its parameters cell and 2 more); papermill's injected one is not
    assert progress[-1].cells_done == progress[-1].cells_total == 3
    # what the time went into, in order: the environment was built (it was forgotten above)
    assert phase_names(events) == [
        "fetching",
        "environment",
        "container",
        "kernel",
        "running",
        "uploading",
    ]
    built = phase_details_of(events, "environment")
    assert built[0]["cached"] is False and built[0]["step"] == "resolving"  # the first build step

    files = result_files(alice, task.id, tmp_path)
    assert files["outputs/answer.toml"] == b"answer = 42\n"
    texts = ["".join(o.get("text", "")) for o in outputs_of(files["main.ipynb"])]
    assert "tick 3" in "".join(texts)
    variables = json.loads(files[".hivemind/variables.json"])
    assert variables["answer"]["json"] == 42
    meta = json.loads(files[".hivemind/result.json"])
    assert meta["outcome"] == "SUCCEEDED"
    assert final.metrics.wall_seconds > 0 and final.metrics.cpu_seconds > 0
    assert final.metrics.peak_memory_bytes > 0
    assert task_containers(task.id) == []

    # The same requirements again: the environment image is reused, not built a second time.
    notices_first = [e.text for e in events if e.kind == pb.TaskEvent.NOTICE]
    assert any("new environment" in text for text in notices_first)
    again = submit(alice, data, parameters={"factor": 2}, timeout=600)
    second = wait_state(alice, again.id)
    assert second.state == pb.SUCCEEDED, second.error
    events_again = list(alice.watch(again.id, follow=False))
    notices = [e.text for e in events_again if e.kind == pb.TaskEvent.NOTICE]
    assert not any("new environment" in text for text in notices), notices
    assert phase_details_of(events_again, "environment") == [{"cached": True}]
    assert phase_details_of(events_again, "fetching")[0]["cached"] is True
    assert "tick 3" in stdout_of(list(alice.watch(again.id, follow=False)))
