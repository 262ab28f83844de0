"""Why a queued task waits, in words both ends share: the scheduler writes these reasons, and the
clients tell a task that waits for a busy worker from one that no connected worker could ever run."""

from __future__ import annotations

LARGEST = "the largest worker has"  # "needs 4 CPUs, the largest worker has 2"
LARGEST_DISK = (
    "the largest worker offers"  # "needs 50 GiB of disk, the largest worker offers 20 GiB per task"
)
NO_SINGLE_WORKER = "no single worker has all of"  # every resource fits somewhere, never all at once
NO_LABELLED_WORKER = "no online worker has them"  # "needs labels site=lab2; no online worker has them"
NO_PYTHON_WORKER = "no online worker runs it"  # "needs Python 3.12; no online worker runs it (...)"
NO_IMAGE_WORKER = "no online worker allow-lists it"  # "needs image lab/x:1; no online worker ..."

_NEVER = (LARGEST, LARGEST_DISK, NO_SINGLE_WORKER, NO_LABELLED_WORKER, NO_PYTHON_WORKER, NO_IMAGE_WORKER)


def fits_no_worker(reason: str) -> bool:
    """True when the reason says no connected worker could run the task even if it were idle
    (not that the fitting ones are busy, or that none is online: those end by waiting)."""
    return any(phrase in reason for phrase in _NEVER)
