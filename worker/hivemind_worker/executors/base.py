"""What every executor offers: run the in-container runner on a prepared task folder, stream its
events, and stop it on cancel, timeout or drain."""

from __future__ import annotations

import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.phases import RUNNER_PHASES

from ..environment_request import EnvironmentRequest
from ..environments import BuildReport, EnvironmentCache

log = logging.getLogger(__name__)

# On cancel and timeout the runner gets SIGTERM and this long to save the notebook so far before
# SIGKILL; short, so a cancel still ends the task well within 2 s.
STOP_GRACE = 1.0

RunnerEvent = dict[str, Any]
EventSink = Callable[[RunnerEvent], None]


class Outcome(StrEnum):
    """How a run ended, as the executor saw it. The runner reports the first five by these values
    in its `end` event (runtime/runner.py runs inside the sandbox, so it writes them as strings)."""

    OK = "ok"  # the notebook ran to the end
    NOTEBOOK_ERROR = "error"  # a cell raised; traceback attached
    KERNEL_DIED = "kernel_died"
    RUNNER_ERROR = "runner_error"  # the runner could not run the notebook at all
    OUT_OF_MEMORY = "oom"
    OUT_OF_DISK = "out_of_disk"  # past the task's disk limit (found by the attempt, not the runner)
    LEASE_LAPSED = "lease_lapsed"  # the runner stopped itself: the worker's lease lapsed
    DIED = "died"  # the container or process ended without reporting an end
    TIMED_OUT = "timed_out"
    STOPPED = "stopped"  # cancelled or handed back: Stopper.kind says which

    @property
    def task_state(self) -> pb.TaskState.ValueType:
        """The outcome the attempt reports to the pool for a run that ended this way."""
        return _TASK_STATES.get(self, pb.FAILED)


# Every other outcome is a failure. A stopped run is reported CANCELLED, with `requeue` set when
# the worker hands it back (as it does after a lapsed lease).
_TASK_STATES: dict[Outcome, pb.TaskState.ValueType] = {
    Outcome.OK: pb.SUCCEEDED,
    Outcome.TIMED_OUT: pb.TIMED_OUT,
    Outcome.STOPPED: pb.CANCELLED,
    Outcome.LEASE_LAPSED: pb.CANCELLED,
}


@dataclass
class RunSpec:
    """Everything one run needs. Paths are on the host."""

    name: str  # unique per attempt, e.g. hivemind-<task>-<attempt>
    task_dir: Path  # the unpacked bundle; the notebook's working folder
    out_dir: Path  # where the runner writes executed.ipynb and variables.json
    notebook: str  # relative to task_dir
    parameters: dict[str, Any]
    pull_variables: list[str]
    environment: str  # an image tag (docker) or a Python interpreter (local)
    cpus: float = 0.0
    memory_bytes: int = 0
    gpus: int = 0
    timeout: float = 0.0  # the task's whole timeout, build and run together (0: none)
    started_at: float | None = None  # time.monotonic() when the timeout began: before the build
    allow_network: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    tmp_dir: Path | None = None  # the task's /tmp (TMPDIR), on its disk; None: the executor's own
    max_output_chars: int = 0  # printed text the executed notebook keeps (0: the runner's default)
    lease_dir: Path | None = None  # holds the lease file the runner watches (lease.py); None: unbound


@dataclass
class RunOutcome:
    status: Outcome
    error: str = ""
    traceback: str = ""
    exit_code: int | None = None
    cpu_seconds: float = 0.0
    peak_memory_bytes: int = 0


class Stopper:
    """Asks a running task to stop: why (cancel, timeout, requeue) and the message to report."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.kind = ""
        self.reason = ""

    def stop(self, kind: str, reason: str) -> None:
        if not self.event.is_set():
            self.kind, self.reason = kind, reason
            self.event.set()

    @property
    def stopped(self) -> bool:
        return self.event.is_set()


class LineParser:
    """Turns the runner's byte stream into events; a line that is not an event becomes stderr."""

    def __init__(self, sink: EventSink) -> None:
        self._sink = sink
        self._pending: list[bytes] = []  # the pieces of a line not ended yet
        self.end: RunnerEvent | None = None

    def feed(self, data: bytes) -> None:
        # Only the new data is searched and the pieces of a long line are joined once, at its end:
        # rejoining the whole pending line on every read made a 10 MB line cost gigabytes of
        # copying, and the slow reader made the runner fall behind its kernel.
        *lines, rest = data.split(b"\n")
        if lines:
            self._line(b"".join([*self._pending, lines[0]]))
            for line in lines[1:]:
                self._line(line)
            self._pending = []
        if rest:
            self._pending.append(rest)

    def close(self) -> None:
        if self._pending:
            self._line(b"".join(self._pending))
            self._pending = []

    def _line(self, raw: bytes) -> None:
        if not raw.strip():
            return
        try:
            event = json.loads(raw)
            if not isinstance(event, dict) or "t" not in event:
                raise ValueError("not an event")
        except ValueError:
            event = {"t": "stderr", "text": raw.decode("utf-8", "replace") + "\n"}
        if event["t"] == "end":
            self.end = event
            return
        if event["t"] == "phase":
            # The runner shares the sandbox with the task's code: it may say only its own phases,
            # and with no details, so nothing in the sandbox can write the worker's phases.
            if event.get("name") not in RUNNER_PHASES:
                log.debug("a phase the runner may not report was dropped: %.200r", event.get("name"))
                return
            event = {"t": "phase", "name": event["name"]}
        try:
            self._sink(event)
        except Exception:
            log.exception("an event sink failed")


def phase_event(name: str, **details: Any) -> RunnerEvent:
    """A phase as an event of the runner's protocol (runtime/runner.py writes them the same way)."""
    return {"t": "phase", "name": name, **details}


def outcome_from_end(end: RunnerEvent | None, exit_code: int | None) -> RunOutcome:
    """The outcome a runner reported, or DIED when it reported none (RUNNER_ERROR for a status
    this worker does not know)."""
    if end is None:
        return RunOutcome(
            Outcome.DIED,
            error=f"the task's process ended without a result (exit code {exit_code})",
            exit_code=exit_code,
        )
    metrics = end.get("metrics") or {}
    reported = str(end.get("status", Outcome.RUNNER_ERROR))
    error = str(end.get("error") or "")
    try:
        status = Outcome(reported)
    except ValueError:
        status = Outcome.RUNNER_ERROR
        error = error or f"the runner ended with an unknown status {reported!r}"
    return RunOutcome(
        status=status,
        error=error,
        traceback=str(end.get("traceback") or ""),
        exit_code=exit_code,
        cpu_seconds=float(metrics.get("cpu_seconds") or 0.0),
        peak_memory_bytes=int(metrics.get("peak_memory_bytes") or 0),
    )


class StopCheck:
    """Whether a run must end now, and the outcome that says why: the stopper fired (cancel,
    requeue) or the task ran past its timeout, counted from spec.started_at (the attempt starts it
    before the environment is built: the timeout covers build and run) or else from now."""

    def __init__(self, spec: RunSpec, stopper: Stopper) -> None:
        self.spec = spec
        self.stopper = stopper
        started = spec.started_at if spec.started_at is not None else time.monotonic()
        self.deadline = started + spec.timeout if spec.timeout > 0 else None

    def wait(self, seconds: float) -> Outcome | None:
        """STOPPED or TIMED_OUT when the run must end, else None after waiting up to seconds."""
        if self.stopper.event.wait(seconds):
            return Outcome.STOPPED
        if self.deadline is not None and time.monotonic() > self.deadline:
            return Outcome.TIMED_OUT
        return None

    def outcome(self, kind: Outcome) -> RunOutcome:
        """The outcome of a run stopped for kind (what wait returned)."""
        if kind == Outcome.TIMED_OUT:
            return RunOutcome(
                Outcome.TIMED_OUT,
                error=f"the task ran longer than its timeout ({self.spec.timeout:.0f}s) and was stopped",
            )
        return RunOutcome(Outcome.STOPPED, error=self.stopper.reason)


class StderrTail:
    """What the task writes to stderr: logged (debug), and its last blocks kept for the error of a
    run that ends without reporting a result."""

    KEEP = 50  # blocks kept
    SHOWN = 20  # blocks quoted in the error

    def __init__(self) -> None:
        self._blocks: list[str] = []

    def add(self, block: bytes) -> None:
        text = block.decode("utf-8", "replace")
        log.debug("task stderr: %s", text.rstrip())
        self._blocks.append(text)
        del self._blocks[: -self.KEEP]

    def explain(self, outcome: RunOutcome) -> RunOutcome:
        """A run that DIED says what it wrote to stderr last."""
        if outcome.status == Outcome.DIED and self._blocks:
            outcome.error += ":\n" + "".join(self._blocks[-self.SHOWN :])
        return outcome


def write_request(
    spec: RunSpec, task_dir_inside: str, out_dir_inside: str, lease_file_inside: str | None = None
) -> Path:
    """The runner's request file, in the output folder; returns its host path."""
    request: dict[str, Any] = {
        "lease_file": lease_file_inside if spec.lease_dir is not None else None,
        "notebook": spec.notebook,
        "cwd": task_dir_inside,
        "out_dir": out_dir_inside,
        "parameters": spec.parameters,
        "pull_variables": spec.pull_variables,
        "kernel": "python3",
    }
    if spec.max_output_chars:
        request["max_output_chars"] = spec.max_output_chars
    path = spec.out_dir / "request.json"
    path.write_text(json.dumps(request))
    path.chmod(0o600)  # the sandbox's user owns it (prepare_dirs) or is the worker's own user
    return path


class Executor(ABC):
    """Runs tasks in one kind of sandbox and keeps their environments."""

    name: str = ""
    isolated: bool = True

    environments: EnvironmentCache

    def environment_for(
        self, request: EnvironmentRequest, report: BuildReport, stopper: Stopper | None = None
    ) -> AbstractContextManager[str]:
        """A context manager yielding the environment string for RunSpec.environment; it builds
        the environment the first time and keeps it in use while the context is open. When the
        stopper fires during the build (or the wait for another task's build) the build container
        or process is killed within a fraction of a second and BuildStopped is raised."""
        return self.environments.use(request, report, stopper.event if stopper is not None else None)

    def python_versions(self) -> list[str]:
        """The Python minor versions this executor runs tasks with, the default first."""
        return self.environments.python_versions()

    def images(self) -> list[str]:
        """The images tasks may ask for (mode "image")."""
        return []

    @abstractmethod
    def run(self, spec: RunSpec, on_event: EventSink, stopper: Stopper) -> RunOutcome:
        """Run the task to its end (or until stopper fires); always leaves nothing running. Besides
        the runner's events, on_event gets {"t": "phase", "name": "container", ...} (phase_event)
        when the sandbox is being created and started."""

    def check_network(self) -> None:  # noqa: B027 - optional hook
        """Raise NoTaskNetwork when a task allowed network could not get one (checked before
        anything is downloaded or built)."""

    def prepare_dirs(self, spec: RunSpec) -> None:  # noqa: B027 - optional hook
        """Make the task and output folders usable by the sandbox's user."""

    def reap_leftovers(self, keep: set[str]) -> list[str]:
        """Stop sandboxes this worker started earlier (e.g. before a crash) whose names are not in
        keep; returns their names."""
        return []

    def close(self) -> None:
        """Release what the executor holds: its environments finish their cleanup."""
        self.environments.close()
