"""Runs a task as a plain process in a venv: for machines without Docker, chosen by the admin.

THIS DOES NOT ISOLATE THE TASK. The notebook runs as the worker's user, sees the worker's files and
the network. What it does give: a venv per requirements hash, the task's timeout and cancel (the
whole process tree is killed), a memory limit enforced by watching the tree's resident memory, and
the disk limit on its folders and TMPDIR (disk.py; a path it writes outside them is not counted),
and the worker's lease: the runner kills its kernel's tree and exits when the lease lapses, so a
task of a frozen or killed worker stops on its own (runtime/runner.py).
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import IO

import psutil

from hivemind_nodepool.protocol.phases import CONTAINER

from ..env_local import LocalEnvironments
from ..image import RUNNER
from ..lease import LEASE_FILE
from .base import (
    STOP_GRACE,
    EventSink,
    Executor,
    LineParser,
    Outcome,
    RunOutcome,
    RunSpec,
    StderrTail,
    StopCheck,
    Stopper,
    outcome_from_end,
    phase_event,
    write_request,
)

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1
WARNING = (
    "the local executor does not isolate tasks: they run as this worker's user, with its "
    "files and network. Use --executor docker where Docker is available."
)


def _tree(process: psutil.Process) -> list[psutil.Process]:
    try:
        return [process, *process.children(recursive=True)]
    except psutil.Error:
        return []


def _rss(processes: list[psutil.Process]) -> int:
    total = 0
    for proc in processes:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything it started (kernels start their own sessions)."""
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    for proc in reversed(_tree(root)):
        try:
            proc.kill()
        except psutil.Error:
            continue


def _task_environment(spec: RunSpec) -> dict[str, str]:
    """The worker's environment without its own settings, no GPUs unless the task asked, and its
    temporary files on its disk."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVEMIND_")}
    env.update({"PYTHONUNBUFFERED": "1", "HIVEMIND_TASK": "1", "MPLBACKEND": "agg"})
    if spec.gpus <= 0:
        env["CUDA_VISIBLE_DEVICES"] = ""
    if spec.tmp_dir is not None:  # temporary files land on the task's disk, inside its limit
        env.update(dict.fromkeys(("TMPDIR", "TEMP", "TMP"), str(spec.tmp_dir)))
    return env


def _watch(
    process: subprocess.Popen[bytes], root: psutil.Process, spec: RunSpec, check: StopCheck
) -> tuple[Outcome | None, int]:
    """Poll the task's process tree until it exits or must be stopped: (why it must stop, or None;
    the peak resident memory of the tree)."""
    peak = 0
    stop: Outcome | None = None
    while process.poll() is None:
        used = _rss(_tree(root))
        peak = max(peak, used)
        over = spec.memory_bytes and used > spec.memory_bytes
        stop = Outcome.OUT_OF_MEMORY if over else check.wait(POLL_SECONDS)
        if stop:
            break
    return stop, peak


class LocalExecutor(Executor):
    name = "local"
    isolated = False

    def __init__(self, state_dir: Path, environments: LocalEnvironments | None = None) -> None:
        if environments is None:
            from ..env_admin import LOCAL_FOLDER, index_settings
            from ..settings import WorkerSettings

            settings = WorkerSettings(state_dir=state_dir)
            environments = LocalEnvironments(
                state_dir / LOCAL_FOLDER, settings.env_cache_size, index_settings(settings)
            )
        self.environments = environments
        log.warning(WARNING)

    def run(self, spec: RunSpec, on_event: EventSink, stopper: Stopper) -> RunOutcome:
        on_event(phase_event(CONTAINER, sandbox="process"))
        lease_file = str(spec.lease_dir / LEASE_FILE) if spec.lease_dir is not None else None
        write_request(spec, str(spec.task_dir), str(spec.out_dir), lease_file)
        env = _task_environment(spec)
        process = subprocess.Popen(
            [spec.environment, str(RUNNER), str(spec.out_dir / "request.json")],
            cwd=spec.task_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        assert process.stdout is not None and process.stderr is not None
        parser = LineParser(on_event)
        stderr_tail = StderrTail()
        readers = [
            threading.Thread(target=self._pump, args=(process.stdout, parser.feed), daemon=True),
            threading.Thread(target=self._pump, args=(process.stderr, stderr_tail.add), daemon=True),
        ]
        for reader in readers:
            reader.start()
        check = StopCheck(spec, stopper)
        peak = 0
        stop: Outcome | None = None
        tree: list[psutil.Process] = []
        try:
            root = psutil.Process(process.pid)
            stop, peak = _watch(process, root, spec, check)
            if stop in (Outcome.STOPPED, Outcome.TIMED_OUT):
                # The runner saves the notebook so far on SIGTERM. Its kernel (taken now: once
                # the runner is gone it is nobody's child) is killed below.
                tree = _tree(root)
                process.terminate()
                with suppress(subprocess.TimeoutExpired):
                    process.wait(STOP_GRACE)
        except psutil.NoSuchProcess:
            pass
        finally:
            kill_tree(process.pid)
            for proc in reversed(tree):
                try:
                    proc.kill()
                except psutil.Error:
                    continue
            process.wait()
            for reader in readers:
                reader.join(timeout=5)
            parser.close()
        if stop in (Outcome.STOPPED, Outcome.TIMED_OUT):
            return check.outcome(stop)
        if stop == Outcome.OUT_OF_MEMORY:
            return RunOutcome(
                Outcome.OUT_OF_MEMORY,
                peak_memory_bytes=peak,
                error=(f"out of memory: the task used more than its limit ({spec.memory_bytes} bytes)"),
            )
        outcome = outcome_from_end(parser.end, process.returncode)
        outcome.peak_memory_bytes = max(outcome.peak_memory_bytes, peak)
        return stderr_tail.explain(outcome)

    @staticmethod
    def _pump(stream: IO[bytes], sink: Callable[[bytes], None]) -> None:
        with stream:
            while block := stream.read1(65536):  # type: ignore[attr-defined]
                sink(block)
