"""Task states and the sets everyone reasons with: one name per meaning, defined once.

QUEUED -> ASSIGNED -> PREPARING -> RUNNING -> UPLOADING -> one of the terminal states.
The panel mirrors these sets in labextension/src/states.ts; a test checks that both agree.
"""

from __future__ import annotations

from hivemind_nodepool.proto import nodepool_pb2 as pb

# The task has an outcome and never changes state again.
TERMINAL_STATES: frozenset[int] = frozenset({pb.SUCCEEDED, pb.FAILED, pb.CANCELLED, pb.TIMED_OUT, pb.LOST})
# An attempt holds a worker's resources: the task was handed to a worker and has not ended.
ON_WORKER_STATES: frozenset[int] = frozenset({pb.ASSIGNED, pb.PREPARING, pb.RUNNING, pb.UPLOADING})
# Not finished yet: waiting for a worker or on one.
UNFINISHED_STATES: frozenset[int] = ON_WORKER_STATES | {pb.QUEUED}


def state_name(state: int) -> str:
    """'RUNNING' for pb.RUNNING."""
    return pb.TaskState.Name(state)  # type: ignore[arg-type]


def is_terminal(state: int) -> bool:
    return state in TERMINAL_STATES


# Worker states. A present worker is online (takes new tasks) or draining (finishes the tasks it
# has, takes no more); either way it still holds and runs work.
PRESENT_WORKER_STATES: frozenset[int] = frozenset({pb.WORKER_ONLINE, pb.WORKER_DRAINING})


def worker_present(state: int) -> bool:
    """True for an online or draining worker."""
    return state in PRESENT_WORKER_STATES


def ended_at(task: pb.Task) -> float | None:
    """When a finished task reached its terminal state (None while it is unfinished)."""
    if task.state not in TERMINAL_STATES:
        return None
    for item in reversed(task.timeline):
        if item.state == task.state:
            return item.at
    return task.updated_at or None


def elapsed_seconds(task: pb.Task, now: float) -> float:
    """The one time shown for a task everywhere: from its submission to its end, or to `now`
    (wall-clock seconds) while it is unfinished."""
    if not task.created_at:
        return 0.0
    end = ended_at(task)
    return max(0.0, (now if end is None else end) - task.created_at)
