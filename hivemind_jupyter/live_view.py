"""What a waiting `%%hivemind` cell shows: a live status line plus the remote output as it arrives.

The status (state, why it waits, worker, elapsed time, progress) is a small ipywidgets view in a
kernel with a frontend, a text line updated in place where widgets are unavailable, and printed
lines in a terminal. On the worker, the phase the attempt is in takes the state's place ("fetching
the bundle", "building the environment: installing requirements.txt", "starting the kernel",
"running · cell 2/5"); the bar counts the user's cells, and moves without a fraction (a working
look, not 0 % or 50 %) while there is nothing to count: before the first cell, and for a task of
one cell, as every `%%hivemind` cell is. Remote stdout and stderr go to the cell's own streams,
and remote rich outputs are displayed as they arrive, so the saved notebook holds them just as if
the cell ran here, made safe first unless the pool is trusted (see results.display_bundle).
"""

from __future__ import annotations

import html
import json
import logging
import sys
import time
from typing import Any

from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol import phases
from hivemind_nodepool.protocol.states import TERMINAL_STATES, elapsed_seconds, state_name
from hivemind_nodepool.protocol.units import format_duration

from .results import display_bundle

log = logging.getLogger(__name__)

_TERMINAL_NAMES = frozenset(state_name(state) for state in TERMINAL_STATES)
_PHASED_STATES = frozenset({"PREPARING", "RUNNING", "UPLOADING"})  # a worker's phases apply
_WORKING_CLASS = "hivemind-working"
# The bar's look while nothing can be counted: full, with stripes moving (ipywidgets has no
# indeterminate progress bar). In the label's HTML, which the widget sets as it is.
_WORKING_STYLE = (
    "<style>.hivemind-working .progress-bar{background-image:linear-gradient(45deg,"
    "rgba(255,255,255,.4) 25%,transparent 25%,transparent 50%,rgba(255,255,255,.4) 50%,"
    "rgba(255,255,255,.4) 75%,transparent 75%,transparent);background-size:16px 16px;"
    "animation:hivemind-working 1s linear infinite}"
    "@keyframes hivemind-working{from{background-position:0 0}to{background-position:16px 0}}</style>"
)

_COLOURS = {
    "SUCCEEDED": "#2e7d32",
    "FAILED": "#c62828",
    "CANCELLED": "#6d4c41",
    "TIMED_OUT": "#c62828",
    "LOST": "#c62828",
    "RUNNING": "#1565c0",
    "QUEUED": "#6a1b9a",
}


def _display(obj: Any, **kwargs: Any) -> Any:
    from IPython.display import display

    return display(obj, **kwargs)


def _publish(data: dict[str, Any], metadata: dict[str, Any]) -> None:
    from IPython.display import publish_display_data

    publish_display_data(data=data, metadata=metadata)


def notice_bundle(text: str) -> dict[str, str]:
    """How a HiveMind notice shows in a notebook: a muted line marked as HiveMind's, not stderr."""
    body = html.escape(text)
    return {
        "text/plain": f"[hivemind] {text}",
        "text/html": f'<div class="hivemind-notice" style="{_NOTICE_STYLE}">ⓘ HiveMind: {body}</div>',
    }


_NOTICE_STYLE = (
    "color: var(--jp-ui-font-color2, #616161); font-size: var(--jp-ui-font-size1, 13px); "
    "font-style: italic; white-space: pre-wrap"
)


class LiveView:
    """Receives a task's events and shows them; subclasses draw the status.

    A worker's rich outputs are shown as they are only when `trusted` (the user trusts the pool's
    workers); otherwise JavaScript is dropped and HTML sanitised (results.untrusted_bundle)."""

    trusted = False

    def __init__(self, task: pb.Task) -> None:
        self.task_id = task.id
        self.state = state_name(task.state)
        self.reason = task.pending_reason
        self.worker = task.worker_name
        self.done = task.progress.cells_done
        self.total = task.progress.cells_total
        self.attempt = task.attempt
        self.phase = ""  # the attempt's phase, from its PHASE events ("" before the first)
        self.phase_details: dict[str, Any] = {}
        self.started = time.monotonic()
        self.latest = task  # the task as last read: its submission time, and its end once it ended
        self.ended_at = 0.0
        self.displays_shown = 0
        self.streamed = False
        self.remote_error: list[str] | None = None
        self._last_drawn: tuple[Any, ...] | None = None

    # -- input ----------------------------------------------------------------------------------

    def update_task(self, task: pb.Task) -> None:
        self._take(task)
        self.draw()

    def _take(self, task: pb.Task) -> None:
        self.latest = task
        self.state = state_name(task.state)
        self.reason = task.pending_reason if task.state == pb.QUEUED else ""
        self.worker = task.worker_name or self.worker
        if task.attempt > self.attempt or self.state not in _PHASED_STATES:
            self.attempt = max(self.attempt, task.attempt)
            self._set_phase("")
        if task.progress.cells_total:
            self.done, self.total = task.progress.cells_done, task.progress.cells_total

    def on_event(self, event: pb.TaskEvent) -> None:
        kind = event.kind
        if kind == pb.TaskEvent.STDOUT:
            self.streamed = True
            sys.stdout.write(event.text)
            sys.stdout.flush()
        elif kind == pb.TaskEvent.STDERR:
            self.streamed = True
            sys.stderr.write(event.text)
            sys.stderr.flush()
        elif kind == pb.TaskEvent.DISPLAY:
            self._show(event.data_json)
        elif kind == pb.TaskEvent.PROGRESS:
            self.done, self.total = event.progress.cells_done, event.progress.cells_total
            self.draw()
        elif kind == pb.TaskEvent.PHASE:
            if event.attempt >= self.attempt:  # not a late word from an attempt already over
                self.attempt = event.attempt
                self._set_phase(event.text, phases.phase_details(event.data_json))
                self.draw()
        elif kind == pb.TaskEvent.STATE:
            self.state = state_name(event.state)
            if self.state not in _PHASED_STATES:
                self._set_phase("")
            if event.state in TERMINAL_STATES:
                self.ended_at = event.at
            if event.state != pb.QUEUED:
                self.reason = ""
            self.draw()
        elif kind == pb.TaskEvent.NOTICE:
            self.notice(event.text)

    def _set_phase(self, name: str, details: dict[str, Any] | None = None) -> None:
        self.phase, self.phase_details = name, details or {}

    def notice(self, text: str) -> None:
        """HiveMind's own information (an environment being built, output truncated): not the
        task's stderr, so never on the red stderr background. Here: a prefixed stdout line."""
        sys.stdout.write(f"[hivemind] {text}\n")
        sys.stdout.flush()

    def _show(self, data_json: str) -> None:
        try:
            output = json.loads(data_json)
        except ValueError:
            log.warning("a display output that is not JSON was skipped")
            return
        if not isinstance(output, dict):
            return
        if output.get("output_type") == "error":
            self.remote_error = [str(line) for line in output.get("traceback") or []] or [
                f"{output.get('ename')}: {output.get('evalue')}"
            ]
            return
        if output.get("output_type") in ("display_data", "execute_result"):
            data, metadata = output.get("data"), output.get("metadata")
            bundle = display_bundle(
                data if isinstance(data, dict) else {},
                metadata if isinstance(metadata, dict) else {},
                self.trusted,
            )
            if bundle is not None:
                _publish(*bundle)
            self.displays_shown += 1

    # -- drawing --------------------------------------------------------------------------------

    def elapsed(self) -> float:
        """Since the task was submitted, until it ended: the same time the pool's timeline gives."""
        if not self.latest.created_at:
            return time.monotonic() - self.started
        # An ended task's STATE event carries its end before the final read of the task arrives.
        return elapsed_seconds(self.latest, self.ended_at or time.time())

    def finished(self) -> bool:
        return self.state in _TERMINAL_NAMES

    def summary(self, note: str = "") -> str:
        """The one status line; once the task ended it reads e.g. `SUCCEEDED in 19.9s`, then the note."""
        if self.finished():
            parts = [f"HiveMind {self.task_id}: {self.state} in {format_duration(self.elapsed())}"]
            if self.worker:
                parts.append(f"on {self.worker}")
            return " · ".join([*parts, note] if note else parts)
        parts = [f"HiveMind {self.task_id}: {self.doing()}"]
        if self.state == "QUEUED" and self.reason:
            parts.append(f"waiting: {self.reason}")
        if self.worker:
            parts.append(f"on {self.worker}")
        if self.counting():
            parts.append(f"cell {self.done}/{self.total}")
        parts.append(format_duration(self.elapsed()))
        return " · ".join(parts)

    def doing(self) -> str:
        """The phase the attempt is in, as people read it; the state where no phase is known."""
        if self.phase and self.state in _PHASED_STATES:
            return phases.phase_label(self.phase, self.phase_details)
        return self.state

    def counting(self) -> bool:
        """Whether cells can be counted now: more than one, and the notebook is running."""
        running = self.phase in ("", phases.RUNNING) and self.state == "RUNNING"
        return self.total > 1 and running

    def working(self) -> bool:
        """Busy on a worker with nothing to count: the bar shows work, not a fraction."""
        return self.state in _PHASED_STATES and not self.counting()

    def draw(self) -> None:
        """Redraw the status; subclasses decide how."""

    def tick(self) -> None:
        """Called about four times a second while waiting (for the elapsed time)."""

    def finish(self, task: pb.Task, note: str = "") -> None:
        """The task ended: show its one final status line (with the note, e.g. where its files are)."""
        self.update_task(task)

    def clear(self) -> None:
        """Take the status away (the cell's interrupted error line says what became of the task)."""


class TerminalView(LiveView):
    """Plain IPython in a terminal: one printed line per change of state, one final line."""

    def draw(self) -> None:
        key = (self.state, self.reason, self.worker, self.doing())
        # The end is finish()'s one line; a task that had ended before the view began (a --no-wait
        # handle read late) replays its states, which are history, not news.
        if key != self._last_drawn and not self.finished() and self.latest.state not in TERMINAL_STATES:
            self._last_drawn = key
            print(f"[hivemind] {self.summary()}", file=sys.stderr, flush=True)

    def finish(self, task: pb.Task, note: str = "") -> None:
        self._take(task)
        print(f"[hivemind] {self.summary(note)}", file=sys.stderr, flush=True)


class TextView(LiveView):
    """A kernel without widgets: a status line updated in place (display ids)."""

    def __init__(self, task: pb.Task) -> None:
        super().__init__(task)
        self._handle = _display(self._bundle(), raw=True, display_id=True)
        self._drawn_at = 0.0

    def _bundle(self, note: str = "") -> dict[str, str]:
        text = self.summary(note)
        colour = _COLOURS.get(self.state, "#455a64")
        return {"text/plain": text, "text/html": f'<div style="color:{colour}">{html.escape(text)}</div>'}

    def draw(self) -> None:
        self._drawn_at = time.monotonic()
        if self._handle is not None:
            self._handle.update(self._bundle(), raw=True)

    def tick(self) -> None:
        if time.monotonic() - self._drawn_at >= 1.0:
            self.draw()

    def finish(self, task: pb.Task, note: str = "") -> None:
        self._take(task)
        if self._handle is not None:
            self._handle.update(self._bundle(note), raw=True)

    def clear(self) -> None:
        if self._handle is not None:
            self._handle.update({"text/plain": ""}, raw=True)

    def notice(self, text: str) -> None:
        """A notice as its own quiet output in the cell (JupyterLab's secondary text colour)."""
        _publish(notice_bundle(text), {})


class WidgetView(TextView):
    """A kernel with a frontend: a status label and a progress bar (ipywidgets), replaced by a
    plain summary when the task ends so the saved notebook does not need widget state."""

    def __init__(self, task: pb.Task) -> None:
        import ipywidgets as widgets

        LiveView.__init__(self, task)
        self._drawn_at = 0.0
        self._label = widgets.HTML()
        self._bar = widgets.IntProgress(min=0, max=1, value=0, layout=widgets.Layout(width="200px"))
        self._box = widgets.HBox([self._bar, self._label])
        self._handle = _display(self._box, display_id=True)
        self.draw()

    def draw(self) -> None:
        self._drawn_at = time.monotonic()
        colour = _COLOURS.get(self.state, "#455a64")
        line = html.escape(self.summary())
        self._label.value = f'{_WORKING_STYLE}<span style="color:{colour}">{line}</span>'
        if self.working():
            self._bar.max, self._bar.value = 1, 1
            self._bar.add_class(_WORKING_CLASS)
        else:
            self._bar.max = max(self.total, 1)
            self._bar.value = min(self.done, self._bar.max)
            self._bar.remove_class(_WORKING_CLASS)
        self._bar.bar_style = {"SUCCEEDED": "success", "FAILED": "danger"}.get(self.state, "info")

    def finish(self, task: pb.Task, note: str = "") -> None:
        self._take(task)
        self._box.close()
        if self._handle is not None:
            self._handle.update(self._bundle(note), raw=True)

    def clear(self) -> None:
        self._box.close()
        super().clear()


def make_view(task: pb.Task, shell: Any = None, widgets: bool | None = None) -> LiveView:
    """The best view this process can show: widgets in a kernel, text lines otherwise."""
    kernel = getattr(shell, "kernel", None) if shell is not None else None
    if shell is None or kernel is None:
        return TerminalView(task)
    if widgets is not False:
        try:
            import ipywidgets  # noqa: F401

            return WidgetView(task)
        except Exception as exc:  # no ipywidgets, or no comm support
            log.debug("widgets unavailable (%s); using the text view", exc)
    return TextView(task)


__all__ = ["TERMINAL_STATES", "LiveView", "TerminalView", "TextView", "WidgetView", "make_view"]
