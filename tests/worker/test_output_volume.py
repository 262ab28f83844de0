"""A task that prints a lot: the executed notebook keeps every line, or its cell says where and
why some were left out, and the live stream says what it did not stream.

The runner is run here as the executors run it (its own process, its events on a pipe), with the
pipe read slowly on purpose. What lost lines before was not the volume itself but the runner
falling more than nbclient's 4 s behind the kernel at the end of a cell (its reader, the worker,
took the events more slowly than the task printed them), and the kernel's ZeroMQ queue dropping
messages past 1000 while the runner was busy. Both depend on volume divided by the reader's speed,
so 16 MB read at about 1 MB/s shows what 100 MB read by a busy worker did, in a test's time; the
end-to-end run through a worker uses the real reader.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from harness.worker import WorkerProcess

from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_worker.image import RUNNER

from .helpers import bundle, notebook, outputs_of, result_files, submit, user, wait_state

LINE = 400  # characters per printed line, newline included


def _printing(lines: int, flush: bool = False) -> str:
    end = ", flush=True" if flush else ""
    return f"for i in range({lines}):\n    print(f'{{i:09d}} ' + 'x' * {LINE - 11}{end})"


def _lines_in(document: dict[str, Any], cell: int = 0) -> list[str]:
    outputs = document["cells"][cell]["outputs"]
    text = "".join(
        "".join(out["text"]) if isinstance(out["text"], list) else out["text"]
        for out in outputs
        if out.get("output_type") == "stream" and out.get("name") == "stdout"
    )
    return text.splitlines()


def _run_runner(
    tmp_path: Path, source: str, read_block: int, pause: float, **request: Any
) -> tuple[dict, list]:
    """Run the runner on a one-cell notebook, reading its events `read_block` bytes at a time with
    `pause` seconds between reads; (the executed notebook, the events)."""
    task, out = tmp_path / "task", tmp_path / "out"
    task.mkdir()
    out.mkdir()
    (task / "main.ipynb").write_bytes(notebook(source))
    (out / "request.json").write_text(
        json.dumps({"notebook": "main.ipynb", "cwd": str(task), "out_dir": str(out), **request})
    )
    process = subprocess.Popen(
        [sys.executable, str(RUNNER), str(out / "request.json")],
        cwd=task,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    received: list[bytes] = []

    def read() -> None:
        assert process.stdout is not None
        while block := process.stdout.read1(read_block):
            received.append(block)
            time.sleep(pause)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        process.wait(timeout=600)
    finally:
        process.kill()
        reader.join(timeout=60)
    events = [json.loads(line) for line in b"".join(received).splitlines() if line.strip()]
    return json.loads((out / "executed.ipynb").read_text()), events


def test_a_slow_reader_costs_no_line_of_the_notebook(tmp_path: Path) -> None:
    lines = 40_000  # 16 MB, read at about 1 MB/s: the runner would fall ~15 s behind
    document, events = _run_runner(
        tmp_path, _printing(lines), read_block=64 * 1024, pause=0.05, live_buffer_bytes=1024 * 1024
    )
    assert events[-1]["t"] == "end" and events[-1]["status"] == "ok", events[-1]
    kept = _lines_in(document)
    assert len(kept) == lines, f"the notebook kept {len(kept)} of {lines} lines"
    assert kept[0].startswith("000000000 ") and kept[-1].startswith(f"{lines - 1:09d} ")
    # The live stream could not take it all: what it left out is said, and where it is.
    notices = [e["text"] for e in events if e["t"] == "notice"]
    assert notices and all(
        "were not streamed" in n and "executed notebook has all of it" in n for n in notices
    )
    streamed = sum(e["text"].count("\n") for e in events if e["t"] == "stdout")
    assert 0 < streamed < lines


def test_many_small_messages_are_all_kept(tmp_path: Path) -> None:
    """Every print flushed is one kernel message: more queue up than ZeroMQ's default 1000 while
    the runner handles them, which dropped some (345 of 30,000 in one run) before."""
    lines = 15_000
    document, events = _run_runner(tmp_path, _printing(lines, flush=True), read_block=1024 * 1024, pause=0)
    assert events[-1]["status"] == "ok", events[-1]
    assert len(_lines_in(document)) == lines


def test_past_the_notebooks_cap_the_cell_says_what_was_left_out(tmp_path: Path) -> None:
    lines = 5_000  # 2 MB printed, 200 KB kept
    document, events = _run_runner(
        tmp_path, _printing(lines), read_block=1024 * 1024, pause=0, max_output_chars=200_000
    )
    assert events[-1]["status"] == "ok", events[-1]
    kept = _lines_in(document)
    assert 0 < len(kept) <= 500 and kept[-1].endswith("x")  # whole lines only
    notes = [
        "".join(out["text"])
        for out in document["cells"][0]["outputs"]
        if out.get("name") == "stderr" and "[hivemind]" in "".join(out["text"])
    ]
    assert len(notes) == 1, notes
    assert f"{lines - len(kept):,} lines" in notes[0] and "left out of the executed notebook" in notes[0]
    assert any(e["t"] == "notice" and "printed more than this notebook keeps" in e["text"] for e in events)
    # The live stream is not cut by the notebook's cap (it has its own, in the worker).
    assert sum(e["text"].count("\n") for e in events if e["t"] == "stdout") == lines


@pytest.mark.slow
def test_a_task_that_prints_a_lot_keeps_every_line_through_a_worker(
    pool: Any, local_worker: WorkerProcess, tmp_path: Path
) -> None:
    lines = 50_000  # 20 MB in one cell, through the worker's real reader and event stream
    alice = user(pool)
    task = submit(alice, bundle(notebook(_printing(lines), "print('after')")))
    final = wait_state(alice, task.id, timeout=300)
    assert final.state == pb.SUCCEEDED, (final.error, local_worker.log()[-3000:])
    executed = result_files(alice, task.id, tmp_path)["main.ipynb"]
    document = json.loads(executed)
    assert len(_lines_in(document)) == lines
    assert not any("[hivemind]" in "".join(o.get("text", "")) for o in outputs_of(executed))
    # The live stream stopped at the worker's cap and said so, truthfully now.
    notices = [e.text for e in alice.watch(task.id, follow=False) if e.kind == pb.TaskEvent.NOTICE]
    assert any("output truncated" in n and "the executed notebook still has it" in n for n in notices), (
        notices
    )


@pytest.mark.docker
@pytest.mark.slow
def test_the_issues_100_mb_keep_every_line_in_docker(
    pool: Any, docker_worker: WorkerProcess, tmp_path: Path
) -> None:
    """The run the issue saw: 104,857 lines of 1,000 bytes printed in a Docker task, 74,561 of them
    in the executed notebook, without a word. Now all of them."""
    lines = 104_857
    source = f"for i in range({lines}):\n    print(f'{{i:09d}} ' + 'x' * 989)"
    alice = user(pool)
    task = submit(alice, bundle(notebook(source)), memory=2 * 1024**3, timeout=600)
    final = wait_state(alice, task.id, timeout=280)
    assert final.state == pb.SUCCEEDED, (final.error, docker_worker.log()[-3000:])
    document = json.loads(result_files(alice, task.id, tmp_path)["main.ipynb"])
    kept = _lines_in(document)
    assert len(kept) == lines and kept[-1].startswith(f"{lines - 1:09d} ")
