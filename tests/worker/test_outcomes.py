"""Executor outcomes: one enum, each member's task state, and the runner's statuses parsed into it.
Pure logic, in-process (the end-to-end runs are in test_endings.py)."""

from __future__ import annotations

import ast

from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_worker.executors.base import Outcome, outcome_from_end
from hivemind_worker.image import RUNNER


def test_each_outcome_has_a_task_state() -> None:
    assert {o: o.task_state for o in Outcome} == {
        Outcome.OK: pb.SUCCEEDED,
        Outcome.NOTEBOOK_ERROR: pb.FAILED,
        Outcome.KERNEL_DIED: pb.FAILED,
        Outcome.RUNNER_ERROR: pb.FAILED,
        Outcome.OUT_OF_MEMORY: pb.FAILED,
        Outcome.OUT_OF_DISK: pb.FAILED,
        Outcome.DIED: pb.FAILED,
        Outcome.TIMED_OUT: pb.TIMED_OUT,
        Outcome.STOPPED: pb.CANCELLED,
        Outcome.LEASE_LAPSED: pb.CANCELLED,  # handed back (requeue), as a stopped run
    }


def _runner_statuses() -> set[str]:
    """Every status string the runner (which runs inside the sandbox, without this package) writes."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(RUNNER.read_text())):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if (
                    isinstance(key, ast.Constant)
                    and key.value == "status"
                    and isinstance(value, ast.Constant)
                ):
                    found.add(value.value)
        elif isinstance(node, ast.keyword) and node.arg == "status" and isinstance(node.value, ast.Constant):
            found.add(node.value.value)
    return found


def test_the_runner_writes_only_known_outcomes() -> None:
    statuses = _runner_statuses()
    assert statuses == {"ok", "error", "kernel_died", "runner_error", "lease_lapsed"}
    for status in statuses:
        assert outcome_from_end({"t": "end", "status": status}, 0).status == Outcome(status)


def test_an_end_event_is_parsed_into_the_enum() -> None:
    outcome = outcome_from_end(
        {
            "t": "end",
            "status": "error",
            "error": "ZeroDivisionError",
            "traceback": "tb",
            "metrics": {"cpu_seconds": 1.5, "peak_memory_bytes": 10},
        },
        1,
    )
    assert outcome.status is Outcome.NOTEBOOK_ERROR
    assert (outcome.error, outcome.traceback, outcome.exit_code) == ("ZeroDivisionError", "tb", 1)
    assert (outcome.cpu_seconds, outcome.peak_memory_bytes) == (1.5, 10)


def test_no_end_is_died_and_an_unknown_status_is_a_runner_error() -> None:
    died = outcome_from_end(None, 137)
    assert died.status is Outcome.DIED and "137" in died.error
    odd = outcome_from_end({"t": "end", "status": "exploded"}, 1)
    assert odd.status is Outcome.RUNNER_ERROR and "exploded" in odd.error
    missing = outcome_from_end({"t": "end"}, 1)
    assert missing.status is Outcome.RUNNER_ERROR
