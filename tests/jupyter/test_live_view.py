"""The live view's choice and its text forms (the widget form runs in test_notebook_docker)."""

from __future__ import annotations

import json
import time

from IPython.utils.capture import capture_output

from hivemind_jupyter.live_view import TerminalView, TextView, WidgetView, make_view
from hivemind_nodepool.proto import nodepool_pb2 as pb


def task(state: int = pb.QUEUED, **fields) -> pb.Task:
    return pb.Task(id="t-1", state=state, **fields)


def transition(state: int, at: float) -> pb.StateTransition:
    return pb.StateTransition(state=state, at=at)


def ended(state: int, **fields) -> pb.Task:
    """A task submitted at 1000.0 that reached `state` at 1019.9."""
    return task(state, created_at=1000.0, timeline=[transition(state, 1019.9)], **fields)


def test_a_plain_shell_gets_the_terminal_view(shell):
    assert isinstance(make_view(task(), shell), TerminalView)
    assert isinstance(make_view(task(), None), TerminalView)


def test_terminal_view_prints_each_change_once(shell):
    with capture_output() as captured:
        view = make_view(task(pending_reason="needs 2 GPUs, the largest worker has 1"), shell)
        view.draw()
        view.draw()
        view.on_event(pb.TaskEvent(kind=pb.TaskEvent.STATE, state=pb.RUNNING))
        view.update_task(task(pb.RUNNING, worker_name="gpu-box"))
        view.on_event(pb.TaskEvent(kind=pb.TaskEvent.STDOUT, text="hello\n"))
        view.on_event(pb.TaskEvent(kind=pb.TaskEvent.STDERR, text="warning\n"))
        view.on_event(pb.TaskEvent(kind=pb.TaskEvent.NOTICE, text="output truncated"))
        view.on_event(pb.TaskEvent(kind=pb.TaskEvent.STATE, state=pb.SUCCEEDED, at=1019.9))
        view.finish(ended(pb.SUCCEEDED, worker_name="gpu-box"), "files in results/x/")
    lines = captured.stderr.splitlines()
    assert sum("needs 2 GPUs" in line for line in lines) == 1
    assert any("RUNNING · on gpu-box" in line for line in lines)
    # A notice is HiveMind's, not the task's stderr.
    assert captured.stdout == "hello\n[hivemind] output truncated\n"
    assert "warning" in captured.stderr and "output truncated" not in captured.stderr
    # One final line, one time: from submission to the end, as the pool's timeline has it.
    assert lines[-1] == "[hivemind] HiveMind t-1: SUCCEEDED in 19.9s · on gpu-box · files in results/x/"
    assert sum("SUCCEEDED" in line for line in lines) == 1


def test_display_events_are_shown_with_their_mime_types(shell):
    view = TerminalView(task(pb.RUNNING))
    outputs = [
        {
            "output_type": "display_data",
            "data": {"text/html": ["<b>", "x</b>"], "text/plain": "x"},
            "metadata": {},
        },
        {
            "output_type": "execute_result",
            "data": {"application/json": {"a": [1, 2]}},
            "metadata": {},
            "execution_count": 1,
        },
        {
            "output_type": "error",
            "ename": "ValueError",
            "evalue": "bad",
            "traceback": ["line 1", "ValueError"],
        },
    ]
    with capture_output() as captured:
        for output in outputs:
            view.on_event(pb.TaskEvent(kind=pb.TaskEvent.DISPLAY, data_json=json.dumps(output)))
        view.on_event(pb.TaskEvent(kind=pb.TaskEvent.DISPLAY, data_json="not json"))
    assert [o.data for o in captured.outputs] == [
        {"text/html": "<b>x</b>", "text/plain": "x"},
        {"application/json": {"a": [1, 2]}},
    ]
    assert view.displays_shown == 2
    assert view.remote_error == ["line 1", "ValueError"]


def test_text_view_updates_one_display_in_place(shell, monkeypatch):
    monkeypatch.setattr(shell, "kernel", object(), raising=False)  # a kernel without widget support
    with capture_output() as captured:
        view = make_view(task(pending_reason="no worker has 64 free CPUs"), shell, widgets=False)
        assert isinstance(view, TextView)
        progress = pb.Progress(cells_done=1, cells_total=3)
        view.update_task(task(pb.RUNNING, worker_name="box", progress=progress))
        view.finish(ended(pb.FAILED, worker_name="box"), "files in results/y/")
    texts = [o.data["text/plain"] for o in captured.outputs]
    assert "waiting: no worker has 64 free CPUs" in texts[0]
    assert "RUNNING · on box · cell 1/3" in texts[1]
    assert texts[-1] == "HiveMind t-1: FAILED in 19.9s · on box · files in results/y/"
    assert "text/html" in captured.outputs[-1].data


def test_the_time_counts_from_submission_however_late_the_view_starts(shell):
    """A --no-wait handle read long after the submission shows the same time as the pool."""
    submitted = time.time() - 300
    with capture_output() as captured:
        view = TerminalView(task(pb.RUNNING, created_at=submitted))
        assert 299 < view.elapsed() < 400
        view.finish(
            task(pb.SUCCEEDED, created_at=submitted, timeline=[transition(pb.SUCCEEDED, submitted + 42)])
        )
    assert captured.stderr.splitlines() == ["[hivemind] HiveMind t-1: SUCCEEDED in 42.0s"]


def test_a_kernel_view_shows_notices_as_their_own_quiet_output(shell, monkeypatch):
    monkeypatch.setattr(shell, "kernel", object(), raising=False)
    with capture_output() as captured:
        view = make_view(task(pb.RUNNING), shell, widgets=False)
        view.on_event(pb.TaskEvent(kind=pb.TaskEvent.STDERR, text="a real warning\n"))
        view.on_event(pb.TaskEvent(kind=pb.TaskEvent.NOTICE, text="installing requirements.txt <fast>"))
    assert captured.stderr == "a real warning\n"  # the task's own stderr stays stderr
    assert "installing" not in captured.stdout
    notices = [o.data for o in captured.outputs if "hivemind-notice" in o.data.get("text/html", "")]
    assert len(notices) == 1
    assert notices[0]["text/plain"] == "[hivemind] installing requirements.txt <fast>"
    assert "installing requirements.txt &lt;fast&gt;" in notices[0]["text/html"]


def phase(name: str, attempt: int = 1, **details) -> pb.TaskEvent:
    return pb.TaskEvent(
        kind=pb.TaskEvent.PHASE, text=name, attempt=attempt, data_json=json.dumps(details) if details else ""
    )


def state(value: int, attempt: int = 1) -> pb.TaskEvent:
    return pb.TaskEvent(kind=pb.TaskEvent.STATE, state=value, attempt=attempt)


def progress(done: int, total: int) -> pb.TaskEvent:
    return pb.TaskEvent(kind=pb.TaskEvent.PROGRESS, progress=pb.Progress(cells_done=done, cells_total=total))


def test_the_status_line_says_the_phase_the_attempt_is_in(shell):
    view = TerminalView(task(pb.ASSIGNED, worker_name="box"))
    lines = []
    steps = [
        (state(pb.PREPARING), None),
        (phase("fetching", bytes=3 * 1024 * 1024, cached=False), "fetching the bundle (3.0 MiB)"),
        (phase("environment", cached=False, step="installing requirements.txt"), None),
        (state(pb.RUNNING), "building the environment: installing requirements.txt"),
        (phase("container", sandbox="container"), "starting the container"),
        (phase("kernel"), "starting the kernel"),
        (progress(0, 5), "starting the kernel"),
        (phase("running"), "running · on box · cell 0/5"),
        (progress(2, 5), "running · on box · cell 2/5"),
        (state(pb.UPLOADING), None),
        (phase("uploading"), "uploading the result"),
    ]
    for event, expected in steps:
        view.on_event(event)
        lines.append(view.summary())
        if expected is not None:
            assert f"HiveMind t-1: {expected}" in lines[-1], lines[-1]
    # before the running phase there is nothing to count: no "cell 0/5" while the kernel starts
    assert not any("cell" in line for line in lines[:7]), lines
    # handed back: queued again, the old attempt's phase is gone, and its late words are ignored
    view.on_event(state(pb.QUEUED, attempt=1))
    view.update_task(task(pb.QUEUED, attempt=1, pending_reason="waiting for a worker"))
    assert view.summary().startswith("HiveMind t-1: QUEUED · waiting: waiting for a worker")
    view.update_task(task(pb.PREPARING, attempt=2, worker_name="other"))
    view.on_event(phase("running", attempt=1))
    assert view.summary().startswith("HiveMind t-1: PREPARING · on other")
    view.on_event(phase("fetching", attempt=2, cached=True))
    assert view.summary().startswith("HiveMind t-1: fetching the bundle (cached) · on other")


def test_the_terminal_prints_each_phase_once(shell):
    with capture_output() as captured:
        view = TerminalView(task(pb.PREPARING, worker_name="box"))
        view.draw()
        for event in (phase("fetching"), phase("fetching"), phase("container", sandbox="process")):
            view.on_event(event)
    lines = captured.stderr.splitlines()
    assert [line.split(" · ")[0] for line in lines] == [
        "[hivemind] HiveMind t-1: PREPARING",
        "[hivemind] HiveMind t-1: fetching the bundle",
        "[hivemind] HiveMind t-1: starting the task's process",
    ]


def _bar(view: WidgetView):
    return view._bar  # the widget the user sees beside the status line


def test_a_one_cell_task_shows_a_working_bar_not_a_fraction(shell):
    """A %%hivemind cell is one cell: its bar never reads 0 % or 50 %, and no "cell 0/2" shows."""
    with capture_output():
        view = WidgetView(task(pb.PREPARING, worker_name="box"))
        start = (phase("fetching"), state(pb.RUNNING), phase("kernel"), progress(0, 1), phase("running"))
        for event in start:
            view.on_event(event)
            assert "hivemind-working" in _bar(view)._dom_classes, view.summary()
            assert _bar(view).value == _bar(view).max
            assert "cell 0/" not in view._label.value
        assert "running · on box" in view._label.value
        view.on_event(progress(1, 1))
        assert "hivemind-working" in _bar(view)._dom_classes
        view.finish(ended(pb.SUCCEEDED, worker_name="box"))


def test_a_task_of_several_cells_counts_them_once_they_run(shell):
    with capture_output():
        view = WidgetView(task(pb.RUNNING, worker_name="box"))
        view.on_event(phase("kernel"))
        view.on_event(progress(0, 4))
        assert "hivemind-working" in _bar(view)._dom_classes  # the kernel is starting: nothing to count
        view.on_event(phase("running"))
        view.on_event(progress(1, 4))
        assert "hivemind-working" not in _bar(view)._dom_classes
        assert (_bar(view).value, _bar(view).max) == (1, 4)
        assert "running · on box · cell 1/4" in view._label.value
        view.on_event(state(pb.UPLOADING))
        view.on_event(phase("uploading"))
        assert "hivemind-working" in _bar(view)._dom_classes
        assert "uploading the result" in view._label.value
        view.finish(ended(pb.SUCCEEDED, worker_name="box"))
