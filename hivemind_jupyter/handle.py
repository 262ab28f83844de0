"""TaskHandle: a task followed from a kernel: wait with a live view, read the result, cancel.

`%%hivemind` waits through one of these; `%%hivemind --no-wait` returns it, and
`%hivemind attach ID` makes one for a task submitted before a kernel restart.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hivemind_nodepool.client import PoolClient
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.bundle import describe_renames
from hivemind_nodepool.protocol.errors import Cancelled, HiveMindError
from hivemind_nodepool.protocol.placement import fits_no_worker
from hivemind_nodepool.protocol.states import TERMINAL_STATES, elapsed_seconds, state_name
from hivemind_nodepool.protocol.units import format_duration

from .config import HiveMind
from .errors import DoesNotFit, RemoteTaskError, TaskInterrupted
from .live_view import LiveView, make_view
from .pool import PoolConnector
from .results import (
    FetchedResult,
    cell_outputs,
    error_traceback,
    fetch_into,
    fetch_to,
    keep_asked_for,
    load_pulled,
    show_outputs,
)
from .tracebacks import hints, remote_cell_count, to_local_cell

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
REFRESH_SECONDS = 2.0
PARTIAL_RESULT_WAIT = 15.0  # seconds an interrupted cell waits for the cancelled task's partial result


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
        *,
        pull_pickle: bool = False,
        cell_count: int | None = None,
    ) -> None:
        self.task_id = task_id
        self.connector = connector
        self.settings = settings
        self.shell = shell
        self.pull_pickle = pull_pickle  # --pull-pickle: load pickled variables from this task
        self.cell_count = cell_count  # the execution count of the cell that submitted it, if known
        self._result: TaskResult | None = None
        self._remote_error: list[str] | None = None
        self._hints: list[str] = []
        # Keep waiting when no connected worker could run it (else end at once, saying why).
        self.wait_for_fit = settings.wait_for_fit
        # Keep the whole result beside the notebook (--save), not only what the user asked for.
        self.save = settings.save_results

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

    def fetch(self, to: str | os.PathLike[str] | None = None) -> Path:
        """Fetch the task's whole result (its executed notebook, named after the task, the output
        files, HiveMind's .hivemind/ records) into `to`, a new or empty folder, or by default into
        the results folder's <name>-<id>/; returns the folder. A cell keeps only what was asked for
        beside the notebook: this gets the rest, for as long as the pool keeps it."""
        task = self.task()
        if to is None:
            root = Path(os.getcwd()) / self.settings.results_dir
            return fetch_into(self._client(), task, root).folder
        return fetch_to(self._client(), task, Path(to).expanduser()).folder

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
                # Until the scheduler has said why a queued task waits, look often: a request no
                # worker fits must be said at once.
                every = POLL_SECONDS if view.state == "QUEUED" and not view.reason else REFRESH_SECONDS
                if view.state in ("QUEUED", "ASSIGNED", "PREPARING") and now - refreshed > every:
                    refreshed = now  # why it waits, and where it goes, are on the task, not in events
                    current = client.get_task(self.task_id)
                    view.update_task(current)
                    self._check_fit(current, view)
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

    def _check_fit(self, task: pb.Task, view: LiveView) -> None:
        """End at once (cancelling the task) when no connected worker could ever run it."""
        if self.wait_for_fit or task.state != pb.QUEUED or not fits_no_worker(task.pending_reason):
            return
        try:
            self._client().cancel_task(self.task_id)
            what = f"task {self.task_id} was cancelled"
        except HiveMindError as exc:
            what = f"cancelling task {self.task_id} failed ({exc})"
        view.clear()
        raise DoesNotFit(
            f"no connected worker could run this: {task.pending_reason}. Ask for less, or add "
            f"--wait-for-fit to wait for a larger worker ({what})."
        )

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
            raise self._interrupted(view) from None
        result = self._collect(task, view, show)
        self._result = result
        if check:
            self._raise_if_failed(result)
        return result

    def _interrupted(self, view: LiveView) -> TaskInterrupted:
        """Cancel (or detach from) the task; the one line that says so, as the cell's error."""
        if self.settings.interrupt_action == "detach":
            line = (
                f"Detached from task {self.task_id}, which keeps running; "
                f"follow it again with `%hivemind attach {self.task_id}`."
            )
        else:
            try:
                task = self._client().cancel_task(self.task_id)
            except HiveMindError as exc:
                line = f"Interrupted, but cancelling task {self.task_id} on the pool failed: {exc}"
            else:
                line = self._cancelled_line(task)
        view.clear()
        return TaskInterrupted(line)

    def _cancelled_line(self, task: pb.Task) -> str:
        """'Cancelled on the pool after 12 s; partial result in …/' once the cancelled attempt has
        uploaded what it produced (waited for briefly; a second interrupt stops the wait)."""
        if task.state != pb.CANCELLED:
            return f"Interrupted; task {self.task_id} had already ended {state_name(task.state)}."
        folder: Path | None = None
        deadline = time.monotonic() + PARTIAL_RESULT_WAIT
        try:
            while not task.result_sha256 and task.worker_id and time.monotonic() < deadline:
                time.sleep(POLL_SECONDS)
                task = self._client().get_task(self.task_id)
            if task.result_sha256:
                base = Path(os.getcwd()) / self.settings.results_dir
                fetched = fetch_into(self._client(), task, base)
                if fetched.notebook is None:  # stopped before its notebook was first saved
                    shutil.rmtree(fetched.folder, ignore_errors=True)
                else:
                    folder = fetched.folder
        except (KeyboardInterrupt, HiveMindError, OSError) as exc:
            log.info("the partial result of %s was not fetched: %s", self.task_id, exc)
        line = f"Cancelled on the pool after {format_duration(elapsed_seconds(task, time.time()))}"
        if folder is None:
            return line + "."
        return f"{line}; partial result in {_shown(folder)}/"

    def _fetch(self, task: pb.Task, staging: Path) -> tuple[FetchedResult | None, FetchedResult | None]:
        """(read, kept): the result, fetched to read its outputs and variables from, and what of it
        stays beside the notebook: everything with --save, else only what the user asked for."""
        if not task.result_sha256:
            return None, None
        results_root = Path(os.getcwd()) / self.settings.results_dir
        if self.save:
            fetched = fetch_into(self._client(), task, results_root)
            return fetched, fetched
        fetched = fetch_into(self._client(), task, staging)
        return fetched, keep_asked_for(fetched, task, results_root, notebook=task.state != pb.SUCCEEDED)

    def _collect(self, task: pb.Task, view: LiveView, show: bool) -> TaskResult:
        staging = Path(tempfile.mkdtemp(prefix="hivemind-result-"))
        try:
            return self._collect_from(task, view, show, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _collect_from(self, task: pb.Task, view: LiveView, show: bool, staging: Path) -> TaskResult:
        result = TaskResult(task=task)
        fetched, kept = self._fetch(task, staging)
        if kept is not None:
            result.folder, result.notebook = kept.folder, kept.notebook
            _tell_renames(kept)
        if fetched is not None and fetched.notebook is not None:
            result.outputs = cell_outputs(fetched.notebook)
            if show:
                _show_the_rest(result.outputs, view)
            view.remote_error = view.remote_error or error_traceback(result.outputs)
        wanted = list(task.manifest.pull_variables)  # the pool's copy of what was asked for
        if fetched is not None and wanted:
            allow_pickle = self.pull_pickle or view.trusted
            result.variables, problems = load_pulled(fetched.folder, wanted, allow_pickle=allow_pickle)
            for name, problem in problems.items():
                view.notice(f"variable {name} did not come back: {problem}")
            if self.shell is not None and result.variables:
                self.shell.user_ns.update(result.variables)
        remote = view.remote_error or ([task.traceback.rstrip("\n")] if task.traceback else None)
        if remote is not None:  # numbered as the user's own cell, [cell_count], shows the code
            count = remote_cell_count(fetched.notebook if fetched else None, remote)
            self._remote_error = to_local_cell(remote, count, self.cell_count)
        if task.state == pb.FAILED and task.error:
            self._hints = hints(task.error, self.shell.user_ns if self.shell is not None else {})
        # one quiet line says where the files went, when any stayed beside the notebook
        note = f"files in {_shown(result.folder)}/" if result.folder is not None else ""
        view.finish(task, note)
        return result

    def _raise_if_failed(self, result: TaskResult) -> None:
        if result.task.state != pb.SUCCEEDED:
            raise RemoteTaskError(result.task, self._remote_error, self._hints)

    def __repr__(self) -> str:
        return (
            f"<HiveMind task {self.task_id}: .status() .wait() .result() .logs() .fetch() .cancel(); "
            f"after a restart: %hivemind attach {self.task_id}>"
        )


def _shown(folder: Path) -> Path:
    """A results folder as the user would type it: relative to the working dir when inside it."""
    try:
        return folder.relative_to(Path(os.getcwd()))
    except ValueError:
        return folder


def _tell_renames(kept: FetchedResult) -> None:
    if kept.renamed:
        print(
            f"[hivemind] {len(kept.renamed)} name(s) in the result could not be kept as "
            f"the task wrote them and were renamed in {kept.folder.name}/:\n"
            + describe_renames(kept.renamed),
            file=sys.stderr,
        )


def _show_the_rest(outputs: list[dict[str, Any]], view: LiveView) -> None:
    """The outputs the live events did not carry (rich ones past those shown; every stream when
    nothing streamed), shown as if produced here."""
    rich = [o for o in outputs if o.get("output_type") in ("display_data", "execute_result")]
    if len(rich) > view.displays_shown:
        show_outputs(rich[view.displays_shown :], _publish_display, trusted=view.trusted)
    if not view.streamed:
        show_outputs(
            [o for o in outputs if o.get("output_type") == "stream"], lambda d, m: None, _write_stream
        )


def _publish_display(data: dict[str, Any], metadata: dict[str, Any]) -> None:
    from IPython.display import publish_display_data

    publish_display_data(data=data, metadata=metadata)


def _write_stream(name: str, text: str) -> None:
    stream = sys.stderr if name == "stderr" else sys.stdout
    stream.write(text)
    stream.flush()
