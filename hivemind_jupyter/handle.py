"""TaskHandle: a task followed from a kernel: wait with a live view, read the result, cancel.

`%%hivemind` waits through one of these; `%%hivemind --no-wait` returns it, and
`%hivemind attach ID` makes one for a task submitted before a kernel restart.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hivemind_nodepool.client import PoolClient
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.bundle import describe_renames
from hivemind_nodepool.protocol.errors import Cancelled, HiveMindError
from hivemind_nodepool.protocol.states import TERMINAL_STATES, state_name
from hivemind_nodepool.protocol.units import format_duration

from .config import HiveMind
from .errors import RemoteTaskError
from .live_view import LiveView, make_view
from .pool import PoolConnector
from .results import (
    FetchedResult,
    cell_outputs,
    error_traceback,
    fetch_into,
    load_pulled,
    show_outputs,
)

POLL_SECONDS = 0.25
REFRESH_SECONDS = 2.0


@dataclass
class TaskResult:
    """What came back from a finished task."""

    task: pb.Task
    folder: Path | None = None
    notebook: Path | None = None
    variables: dict[str, Any] = field(default_factory=dict)
    outputs: list[dict[str, Any]] = field(default_factory=list)

    def __repr__(self) -> str:
        where = f", folder={str(self.folder)!r}" if self.folder else ""
        state = state_name(self.task.state)
        return f"TaskResult({self.task.id}, {state}{where}, variables={sorted(self.variables)})"


class TaskHandle:
    """One task on the pool, seen from a kernel."""

    def __init__(
        self,
        task_id: str,
        connector: PoolConnector,
        settings: HiveMind,
        shell: Any = None,
        pull_pickle: bool = False,
    ) -> None:
        self.task_id = task_id
        self.connector = connector
        self.settings = settings
        self.shell = shell
        self.pull_pickle = pull_pickle  # --pull-pickle: load pickled variables from this task
        self._result: TaskResult | None = None
        self._remote_error: list[str] | None = None

    @property
    def id(self) -> str:
        return self.task_id

    def trusted(self) -> bool:
        """Whether this task's worker outputs are trusted: its pool is in c.HiveMind.trusted_pools."""
        return self.settings.trusts(self.connector.pool_address())

    def _client(self) -> PoolClient:
        return self.connector.client()

    # -- looking --------------------------------------------------------------------------------

    def task(self) -> pb.Task:
        """The task as the pool has it now."""
        return self._client().get_task(self.task_id)

    def status(self) -> str:
        """The state's name: 'QUEUED', 'RUNNING', 'SUCCEEDED'..."""
        return state_name(self.task().state)

    def done(self) -> bool:
        return self.task().state in TERMINAL_STATES

    def logs(self) -> str:
        """The remote stdout and stderr so far, in order."""
        parts = [
            event.text
            for event in self._client().watch(self.task_id, follow=False, reconnect_for=5)
            if event.kind in (pb.TaskEvent.STDOUT, pb.TaskEvent.STDERR)
        ]
        return "".join(parts)

    def cancel(self) -> str:
        """Cancel the task (a finished task stays as it is); returns the state."""
        return state_name(self._client().cancel_task(self.task_id).state)

    # -- waiting --------------------------------------------------------------------------------

    def _pump(self, watcher: PoolClient, inbox: queue.Queue[tuple[str, Any]]) -> None:
        """Read the task's events into inbox (in a thread); ("end", None) or ("error", exc) last."""
        try:
            for event in watcher.watch(self.task_id, after_seq=0, follow=True):
                inbox.put(("event", event))
            inbox.put(("end", None))
        except Cancelled:
            inbox.put(("end", None))
        except HiveMindError as exc:
            inbox.put(("error", exc))

    def _follow(self, view: LiveView, timeout: float | None) -> pb.Task:
        """Feed the task's events to the view until it ends; the final task.

        The gRPC stream is read in a thread and handed over through a queue, so the kernel's main
        thread stays interruptible (Ctrl-C, the Interrupt button) and refreshes the elapsed time.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        watcher = self.connector.new_client()
        pump_args = (watcher, inbox)
        thread = threading.Thread(
            target=self._pump, args=pump_args, name=f"hivemind-follow-{self.task_id}", daemon=True
        )
        thread.start()
        client = self._client()
        refreshed = 0.0
        try:
            while True:
                now = time.monotonic()
                if deadline is not None and now > deadline:
                    raise TimeoutError(f"task {self.task_id} is still {view.state} after {timeout:g} s")
                if view.state in ("QUEUED", "ASSIGNED", "PREPARING") and now - refreshed > REFRESH_SECONDS:
                    refreshed = now  # why it waits, and where it goes, are on the task, not in events
                    view.update_task(client.get_task(self.task_id))
                try:
                    kind, item = inbox.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    view.tick()
                    continue
                if kind == "error":
                    raise item
                if kind == "end":
                    task = client.get_task(self.task_id)
                    if task.state in TERMINAL_STATES:
                        return task
                    # The stream ended early: follow it again.
                    thread = threading.Thread(target=self._pump, args=pump_args, daemon=True)
                    thread.start()
                    continue
                view.on_event(item)
                if item.kind == pb.TaskEvent.STATE:
                    if item.state in TERMINAL_STATES:
                        return client.get_task(self.task_id)
                    view.update_task(client.get_task(self.task_id))
        finally:
            watcher.close()

    def wait(self, timeout: float | None = None, show: bool = True) -> str:
        """Block until the task ends (showing its live output); returns the final state."""
        return state_name(self.result(timeout=timeout, show=show, check=False).task.state)

    def result(self, timeout: float | None = None, show: bool = True, check: bool = True) -> TaskResult:
        """Wait, fetch the result into the results folder, show the remote outputs, set the pulled
        variables; raise RemoteTaskError when the task did not succeed (check=False: return it)."""
        if self._result is not None:
            if check:
                self._raise_if_failed(self._result)
            return self._result
        task = self.task()
        view = make_view(task, self.shell) if show else LiveView(task)
        view.trusted = self.trusted()
        try:
            task = self._follow(view, timeout)
        except KeyboardInterrupt:
            self._interrupted(view)
            raise
        result = self._collect(task, view, show)
        self._result = result
        if check:
            self._raise_if_failed(result)
        return result

    def _interrupted(self, view: LiveView) -> None:
        if self.settings.interrupt_action == "detach":
            note = (
                f"interrupted: detached from task {self.task_id}, which keeps running. "
                f"Follow it again with `%hivemind attach {self.task_id}`."
            )
        else:
            try:
                self._client().cancel_task(self.task_id)
                note = f"interrupted: task {self.task_id} was cancelled on the pool."
            except HiveMindError as exc:
                note = f"interrupted, but cancelling task {self.task_id} failed: {exc}"
        with contextlib.suppress(HiveMindError):
            view.finish(self._client().get_task(self.task_id), note)
        print(f"[hivemind] {note}", file=sys.stderr, flush=True)

    def _collect(self, task: pb.Task, view: LiveView, show: bool) -> TaskResult:
        result = TaskResult(task=task)
        fetched: FetchedResult | None = None
        if task.result_sha256:
            base = Path(os.getcwd()) / self.settings.results_dir
            fetched = fetch_into(self._client(), task, base)
            result.folder, result.notebook = fetched.folder, fetched.notebook
            if fetched.renamed:
                print(
                    f"[hivemind] {len(fetched.renamed)} name(s) in the result could not be kept as "
                    f"the task wrote them and were renamed in {fetched.folder.name}/:\n"
                    + describe_renames(fetched.renamed),
                    file=sys.stderr,
                )
        if fetched is not None and fetched.notebook is not None:
            result.outputs = cell_outputs(fetched.notebook)
            rich = [o for o in result.outputs if o.get("output_type") in ("display_data", "execute_result")]
            if show and len(rich) > view.displays_shown:  # outputs the live events did not carry
                show_outputs(rich[view.displays_shown :], _publish_display, trusted=view.trusted)
            if show and not view.streamed:
                show_outputs(
                    [o for o in result.outputs if o.get("output_type") == "stream"],
                    lambda d, m: None,
                    _write_stream,
                )
            view.remote_error = view.remote_error or error_traceback(result.outputs)
        wanted = list(task.manifest.pull_variables)  # the pool's copy of what was asked for
        if fetched is not None and wanted:
            allow_pickle = self.pull_pickle or view.trusted
            result.variables, problems = load_pulled(fetched.folder, wanted, allow_pickle=allow_pickle)
            for name, problem in problems.items():
                print(f"[hivemind] variable {name} did not come back: {problem}", file=sys.stderr)
            if self.shell is not None and result.variables:
                self.shell.user_ns.update(result.variables)
        self._remote_error = view.remote_error
        elapsed = task.metrics.wall_seconds or view.elapsed()
        note = f"{state_name(task.state)} in {format_duration(elapsed)}"
        if result.folder is not None:
            try:
                shown = result.folder.relative_to(Path(os.getcwd()))
            except ValueError:
                shown = result.folder
            note += f"; files in {shown}/"
        view.finish(task, note)
        return result

    def _raise_if_failed(self, result: TaskResult) -> None:
        if result.task.state != pb.SUCCEEDED:
            raise RemoteTaskError(result.task, self._remote_error)

    def __repr__(self) -> str:
        return (
            f"<HiveMind task {self.task_id}: .status() .wait() .result() .logs() .cancel(); "
            f"after a restart: %hivemind attach {self.task_id}>"
        )


def _publish_display(data: dict[str, Any], metadata: dict[str, Any]) -> None:
    from IPython.display import publish_display_data

    publish_display_data(data=data, metadata=metadata)


def _write_stream(name: str, text: str) -> None:
    stream = sys.stderr if name == "stderr" else sys.stdout
    stream.write(text)
    stream.flush()
