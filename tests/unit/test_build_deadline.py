"""The task's timeout covers the build and the run: the run's check counts from when the build
began, and a build past the timeout stops the task with a message that says what to do."""

from __future__ import annotations

import time
from pathlib import Path

from hivemind_worker.build_deadline import BUILD_TIMEOUT_KIND, build_deadline
from hivemind_worker.executors.base import Outcome, RunSpec, StopCheck, Stopper


def spec(timeout: float, started_at: float | None) -> RunSpec:
    return RunSpec(
        name="t",
        task_dir=Path("."),
        out_dir=Path("."),
        notebook="main.ipynb",
        parameters={},
        pull_variables=[],
        environment="python",
        timeout=timeout,
        started_at=started_at,
    )


def test_the_run_counts_its_timeout_from_before_the_build() -> None:
    built_for = 10.0  # the build took 10 s of a 5 s timeout: the run has none left
    check = StopCheck(spec(5.0, time.monotonic() - built_for), Stopper())
    assert check.wait(0) == Outcome.TIMED_OUT
    assert StopCheck(spec(5.0, None), Stopper()).wait(0) is None  # without a start: from now


def test_a_build_past_the_timeout_stops_the_task_saying_what_to_do() -> None:
    stopper = Stopper()
    with build_deadline(stopper, 0.0, 60.0):
        assert stopper.event.wait(30), "the deadline never stopped the build"
    assert stopper.kind == BUILD_TIMEOUT_KIND
    assert "timeout (60s) ran out while its environment was being built" in stopper.reason
    assert "--timeout" in stopper.reason and "--image NAME" in stopper.reason


def test_a_build_that_ends_in_time_or_a_task_without_timeout_is_not_stopped() -> None:
    stopper = Stopper()
    with build_deadline(stopper, 3600.0, 3600.0):
        pass
    with build_deadline(stopper, 0.0, 0.0):  # no timeout: nothing to run out
        pass
    assert not stopper.event.wait(0.2)
