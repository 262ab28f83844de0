"""Printing tasks, events and workers for people (shared by the CLIs)."""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.phases import phase_details, phase_label
from hivemind_nodepool.protocol.states import elapsed_seconds, state_name
from hivemind_nodepool.protocol.units import format_duration, format_size

STATE_MARKS = {
    "QUEUED": "…",
    "ASSIGNED": "→",
    "PREPARING": "⚙",
    "RUNNING": "▶",
    "UPLOADING": "⇧",
    "SUCCEEDED": "✔",
    "FAILED": "✘",
    "CANCELLED": "■",
    "TIMED_OUT": "⌛",
    "LOST": "?",
}


def task_line(task: pb.Task) -> str:
    state = state_name(task.state)
    elapsed = elapsed_seconds(task, time.time())
    resources = task.manifest.resources
    want = f"{resources.cpus:g} cpu, {format_size(resources.memory_bytes)}"
    if resources.gpus:
        want += f", {resources.gpus} gpu"
    if resources.disk_bytes:
        want += f", {format_size(resources.disk_bytes)} disk"
    where = task.worker_name or task.pending_reason or ""
    return (
        f"{task.id:<14} {STATE_MARKS.get(state, ' ')} {state:<10} {task.manifest.name[:28]:<28} "
        f"{format_duration(elapsed):>8}  {want:<24} {where}"
    )


def print_tasks(tasks: list[pb.Task], out: TextIO = sys.stdout) -> None:
    if not tasks:
        print("no tasks yet: submit one with `hivemind submit NOTEBOOK`", file=out)
        return
    print(
        f"{'ID':<14}   {'STATE':<10} {'NAME':<28} {'ELAPSED':>8}  {'RESOURCES':<24} WORKER / REASON", file=out
    )
    for task in tasks:
        print(task_line(task), file=out)


def print_task(task: pb.Task, out: TextIO = sys.stdout) -> None:
    print(task_line(task), file=out)
    for step in task.timeline:
        when = time.strftime("%H:%M:%S", time.localtime(step.at))
        note = f"  {step.message}" if step.message else ""
        print(f"  {when}  {state_name(step.state):<10}{note}", file=out)
    if task.pending_reason:
        print(f"  waiting: {task.pending_reason}", file=out)
    if task.error:
        print(f"  error: {task.error}", file=out)
    if task.traceback:
        print(task.traceback, file=out)


def print_event(event: pb.TaskEvent, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
    """One event as a person reads it: output as is, the rest as marked lines."""
    if event.kind == pb.TaskEvent.STDOUT:
        out.write(event.text)
    elif event.kind == pb.TaskEvent.STDERR:
        err.write(event.text)
    elif event.kind == pb.TaskEvent.STATE:
        note = f": {event.text}" if event.text else ""
        print(f"[hivemind] {state_name(event.state)}{note}", file=err)
    elif event.kind == pb.TaskEvent.PROGRESS:
        print(f"[hivemind] cell {event.progress.cells_done}/{event.progress.cells_total}", file=err)
    elif event.kind == pb.TaskEvent.NOTICE:
        print(f"[hivemind] {event.text}", file=err)
    elif event.kind == pb.TaskEvent.PHASE:
        print(f"[hivemind] {phase_label(event.text, phase_details(event.data_json))}", file=err)
    elif event.kind == pb.TaskEvent.DISPLAY:
        print(_display_text(event.data_json), file=out)
    out.flush()


def _display_text(data_json: str) -> str:
    try:
        output = json.loads(data_json)
    except ValueError:
        return "[output]"
    data = output.get("data", {}) if isinstance(output, dict) else {}
    if "text/plain" in data:
        text = data["text/plain"]
        return "".join(text) if isinstance(text, list) else str(text)
    kinds = ", ".join(sorted(data)) or output.get("output_type", "output")
    return f"[{kinds}]"


def print_workers(workers: list[pb.Worker], out: TextIO = sys.stdout) -> None:
    if not workers:
        print(
            "no workers have joined: start one with `hivemind-worker run --pool ... --join-token ...`",
            file=out,
        )
        return
    print(
        f"{'NAME':<20} {'STATE':<9} {'CPU free/total':>15} {'MEMORY free/total':>22} {'GPU':>7}  TASKS",
        file=out,
    )
    for worker in workers:
        cap, used = worker.capacity, worker.allocated
        state = pb.WorkerState.Name(worker.state).removeprefix("WORKER_")
        cpu = f"{cap.cpus - used.cpus:g}/{cap.cpus:g}"
        mem = f"{format_size(cap.memory_bytes - used.memory_bytes)}/{format_size(cap.memory_bytes)}"
        gpu = f"{cap.gpus - used.gpus}/{cap.gpus}"
        print(
            f"{worker.name[:20]:<20} {state:<9} {cpu:>15} {mem:>22} {gpu:>7}  {worker.running_count}",
            file=out,
        )
