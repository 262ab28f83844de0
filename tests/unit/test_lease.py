"""The worker's lease in-process: what extends it, from when, and the file the sandbox reads."""

from __future__ import annotations

import time
from pathlib import Path

from hivemind_worker.lease import Lease


def test_an_answer_extends_the_lease_from_when_its_heartbeat_was_sent(tmp_path: Path) -> None:
    lease = Lease()
    assert not lease.bound and not lease.lapsed()  # no lease granted: tasks are not bound
    hello = time.monotonic()
    lease.welcome(hello, 5.0)
    assert lease.bound and not lease.lapsed()
    assert lease.lapsed(now=hello + 5.0)  # counted from the Hello, not from the Welcome

    private = lease.attach(tmp_path / "private")  # the local executor's tasks run as the worker
    assert (private.parent.stat().st_mode & 0o777, private.stat().st_mode & 0o777) == (0o700, 0o600)
    path = lease.attach(tmp_path / "lease", shared=True)  # a container's user must read it
    assert (path.parent.stat().st_mode & 0o777, path.stat().st_mode & 0o777) == (0o755, 0o644)
    first = float(path.read_text())
    seq = lease.stamp()
    sent = time.monotonic()
    later = lease.stamp()
    lease.answered(seq)
    assert not lease.lapsed(now=sent + 4.9) and lease.lapsed(now=sent + 5.0 + 1e-3)
    renewed = float(path.read_text())
    assert first <= renewed <= time.time() + 5.0

    lease.answered(999_999)  # never sent: no extension
    assert lease.lapsed(now=sent + 5.0 + 1e-3)
    lease.answered(seq)  # answered twice: the second counts for nothing
    assert lease.lapsed(now=sent + 5.0 + 1e-3)

    lease.detach(path)
    lease.answered(later)  # still extends the lease, but no longer this file
    assert float(path.read_text()) == renewed


def test_a_new_stream_forgets_the_heartbeats_of_the_old_one() -> None:
    lease = Lease()
    lease.welcome(time.monotonic(), 3.0)
    stale = lease.stamp()
    hello = time.monotonic()
    lease.welcome(hello, 3.0)
    lease.answered(stale)  # an answer from the old stream cannot arrive on the new one
    assert lease.lapsed(now=hello + 3.0)
