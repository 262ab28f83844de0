"""The pool's files are its owner's alone: the data folder is 0700, the database and blobs 0600,
an existing folder left readable is tightened at start (and the log says so), and another local
account (`nobody`) cannot read a user's task result."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import FakeWorker, PoolProcess
from harness.fake_worker import make_result_zip
from harness.modes import as_nobody, loose, mode, open_folder

from .helpers import submit


@pytest.fixture
def open_parent() -> Iterator[Path]:
    with open_folder() as parent:
        yield parent


def _result_blob(pool: PoolProcess, tmp_path: Path) -> Path:
    """A task that succeeded with a result; returns the result's blob file."""
    pool.add_user("alice", "alice-password-1")
    alice = pool.login("alice", "alice-password-1")
    worker = FakeWorker(pool.address, pool.join_token()).connect()
    try:
        submit(alice)
        done = worker.run_to_success(
            worker.next_assignment(), make_result_zip(tmp_path / "r.zip", "alice's secret result")
        )
    finally:
        worker.close()
        alice.close()
    sha = done.result_sha256
    return pool.data_dir / "blobs" / sha[:2] / sha[2:]


def test_a_new_data_folder_and_everything_in_it_are_private(open_parent: Path, tmp_path: Path) -> None:
    with PoolProcess(open_parent / "pool") as pool:
        _check_new_folder(pool, tmp_path)


def _check_new_folder(pool: PoolProcess, tmp_path: Path) -> None:
    blob = _result_blob(pool, tmp_path)
    assert mode(pool.data_dir) == 0o700
    for name in ("pool.db", "pool.db-wal", "pool.db-shm", "pool.json", "disk-reserve"):
        assert mode(pool.data_dir / name) == 0o600, name
    assert mode(blob) == 0o600 and mode(blob.parent) == 0o700
    assert loose(pool.data_dir) == []
    peek = as_nobody("cat", str(blob))
    assert peek.returncode != 0 and "Permission denied" in peek.stderr
    assert "secret" not in peek.stdout
    listing = as_nobody("ls", str(pool.data_dir))
    assert listing.returncode != 0 and "Permission denied" in listing.stderr


def test_an_existing_readable_data_folder_is_tightened_at_start(open_parent: Path, tmp_path: Path) -> None:
    data_dir = open_parent / "pool"
    with PoolProcess(data_dir) as pool:
        blob = _result_blob(pool, tmp_path)
    # As an older release left it: 755 folders, 644 files.
    for path in [data_dir, *data_dir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    assert as_nobody("cat", str(blob)).returncode == 0, "the setup should have made it readable"
    with PoolProcess(data_dir) as pool:
        log = pool.log()
        assert loose(data_dir) == []
        assert mode(blob) == 0o600 and mode(data_dir) == 0o700
    assert "the pool's data folder" in log and "was readable by other local accounts" in log
    peek = as_nobody("cat", str(blob))
    assert peek.returncode != 0 and "alice's secret result" not in peek.stdout


def test_a_private_folder_is_left_as_it_is(tmp_path: Path) -> None:
    data_dir = tmp_path / "pool"
    with PoolProcess(data_dir) as first:
        pass
    before = len(first.log_path.read_text())
    with PoolProcess(data_dir) as again:
        assert "was readable by other local accounts" not in again.log_path.read_text()[before:]
        assert mode(data_dir) == 0o700
