"""The Jupyter side's exceptions. The shared ones (and their HTTP codes) live in
hivemind_nodepool.protocol.errors; these are only how this side shows them to a person."""

from __future__ import annotations

from tornado import web

from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.errors import HiveMindError
from hivemind_nodepool.protocol.states import state_name


class ApiError(web.HTTPError):
    """An HTTP error whose message is shown to the person as it is."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, log_message=message.replace("%", "%%"))
        self.message = message


class PoolProblem(HiveMindError):
    """A pool-side problem shown as one line in the cell (no traceback)."""

    def _render_traceback_(self) -> list[str]:
        return [f"HiveMind: {self}"]


class DoesNotFit(PoolProblem):
    """No connected worker could ever run the task as asked; it was cancelled (one line)."""


class RemoteTaskError(HiveMindError):
    """The task did not succeed; IPython shows the remote traceback instead of a local one."""

    def __init__(
        self, task: pb.Task, traceback_lines: list[str] | None = None, hints: list[str] | None = None
    ) -> None:
        self.task = task
        self.state = state_name(task.state)
        self.traceback_lines = traceback_lines or []
        self.hints = hints or []  # what to do about it, e.g. "add `--push df`"
        summary = task.error or self.state.lower().replace("_", " ")
        super().__init__(f"task {task.id} {self.state}: {summary}")

    def _render_traceback_(self) -> list[str]:
        head = f"HiveMind task {self.task.id} ended {self.state}"
        if self.task.worker_name:
            head += f" on {self.task.worker_name}"
        lines = [head + (":" if self.traceback_lines or self.task.traceback or self.task.error else ".")]
        if self.traceback_lines:
            lines.extend(self.traceback_lines)
        elif self.task.traceback:
            lines.extend(self.task.traceback.rstrip("\n").splitlines())
        elif self.task.error:
            lines.append(self.task.error)
        lines.extend(f"HiveMind hint: {hint}" for hint in self.hints)
        return lines


class TaskInterrupted(KeyboardInterrupt):
    """The user interrupted a waiting cell: still a KeyboardInterrupt (a notebook run stops there),
    shown as the one line that says what became of the task, not as a traceback of the wait."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line

    def _render_traceback_(self) -> list[str]:
        return [self.line]
