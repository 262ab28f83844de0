"""What the pool does with a result: ordinary Linux outputs are kept as they are; a result it
refuses (unsafe to unpack, over its result limit) ends the task at once with the reason, and the
refusal reaches the worker as ResultRefused, which says "do not send this again"."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import pytest
from harness import FakeWorker, PoolProcess

from hivemind_nodepool.client import PoolClient
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.errors import Conflict, InvalidInput, ResultRefused

from .helpers import ALICE_PASSWORD, NOTEBOOK, submit


def _result(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("main.ipynb", NOTEBOOK)
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def _running(alice: PoolClient, worker: FakeWorker) -> pb.Assignment:
    submit(alice)
    assignment = worker.next_assignment()
    for state in (pb.PREPARING, pb.RUNNING, pb.UPLOADING):
        worker.status(assignment, state)
    return assignment


def test_ordinary_linux_outputs_are_kept(alice: PoolClient, worker: FakeWorker, tmp_path: Path) -> None:
    """Case-different names, a backslash, 20 MB of zeros: the result the issue saw refused."""
    outputs = {
        "outputs/Result.csv": b"upper",
        "outputs/result.csv": b"lower",
        "outputs/a\\b.txt": b"backslash",
        "outputs/zeros.bin": b"\0" * (20 * 1000 * 1000),
    }
    assignment = _running(alice, worker)
    task = worker.finish(assignment, pb.SUCCEEDED, _result(tmp_path / "r.zip", outputs))
    assert task.state == pb.SUCCEEDED and task.result_sha256
    fetched = alice.fetch_result(task.id, tmp_path / "fetched.zip")
    with zipfile.ZipFile(fetched) as archive:
        assert {name: archive.read(name) for name in outputs} == outputs


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ({"../escape.txt": b"x"}, "climbs out"),
        ({"/etc/escape": b"x"}, "absolute"),
        ({"outputs/a.txt": b"1", "outputs/a.txt/b": b"2"}, "which is a file"),
    ],
    ids=["traversal", "absolute", "file and folder"],
)
def test_an_unsafe_result_ends_the_task_at_once(
    alice: PoolClient, worker: FakeWorker, tmp_path: Path, entries: dict[str, bytes], reason: str
) -> None:
    assignment = _running(alice, worker)
    hostile = _result(tmp_path / "hostile.zip", entries)
    with pytest.raises(ResultRefused, match=f"the result was refused: .*{reason}"):
        worker.finish(assignment, pb.SUCCEEDED, hostile)
    task = alice.get_task(assignment.task_id)
    assert task.state == pb.FAILED, pb.TaskState.Name(task.state)
    assert task.error.startswith("the result was refused: ") and reason in task.error
    assert task.result_sha256 == ""
    assert task.timeline[-1].state == pb.FAILED and "refused" in task.timeline[-1].message
    # Sending it again gets the ordinary "this task has ended" answer: nothing waits for a backstop.
    with pytest.raises(Conflict, match="ended"):
        worker.finish(assignment, pb.SUCCEEDED, hostile)


def test_a_refused_result_of_a_failed_task_keeps_the_failure(
    alice: PoolClient, worker: FakeWorker, tmp_path: Path
) -> None:
    assignment = _running(alice, worker)
    hostile = _result(tmp_path / "hostile.zip", {"../escape.txt": b"x"})
    with pytest.raises(ResultRefused):
        worker.finish(assignment, pb.FAILED, hostile, error="ZeroDivisionError: division by zero")
    task = alice.get_task(assignment.task_id)
    assert task.state == pb.FAILED
    assert task.error.splitlines() == [
        "the result was refused: entry '../escape.txt' climbs out of the bundle with '..'",
        "ZeroDivisionError: division by zero",
    ]


def test_a_result_over_the_pools_limit_is_refused_for_good(tmp_path: Path) -> None:
    with PoolProcess(tmp_path / "pool", extra_args=["--max-result-size", "1M"]) as pool:
        pool.add_user("alice", ALICE_PASSWORD)
        alice = pool.login("alice", ALICE_PASSWORD)
        worker = FakeWorker(pool.address, pool.join_token(), name="runner").connect()
        try:
            assignment = _running(alice, worker)
            big = _result(tmp_path / "big.zip", {"outputs/noise.bin": os.urandom(3 * 1024 * 1024)})
            with pytest.raises(ResultRefused, match=r"larger than the pool.s result limit of 1\.0 MiB"):
                worker.finish(assignment, pb.SUCCEEDED, big)
            task = alice.get_task(assignment.task_id)
            assert task.state == pb.FAILED
            assert "the result was refused: it is larger than the pool's result limit" in task.error
        finally:
            worker.close()
            alice.close()


def test_a_transient_upload_error_is_not_a_refusal(
    alice: PoolClient, worker: FakeWorker, tmp_path: Path
) -> None:
    """A damaged transfer (the bytes do not hash to what was claimed) may be sent again: it stays an
    ordinary InvalidInput, and the task keeps waiting for the good upload."""
    assignment = _running(alice, worker)
    good = _result(tmp_path / "good.zip", {"outputs/x.txt": b"x"}).read_bytes()
    header = pb.ResultHeader(task_id=assignment.task_id, attempt=assignment.attempt, outcome=pb.SUCCEEDED)

    def upload(claimed: str) -> pb.Task:
        parts = iter(
            [
                pb.UploadResultRequest(header=header),
                pb.UploadResultRequest(chunk=good),
                pb.UploadResultRequest(sha256=claimed),
            ]
        )
        return worker.client._unary(worker.client._gateway.UploadResult, parts)

    with pytest.raises(InvalidInput, match="sha256") as caught:
        upload("0" * 64)
    assert not isinstance(caught.value, ResultRefused)
    assert alice.get_task(assignment.task_id).state == pb.UPLOADING
    assert upload(hashlib.sha256(good).hexdigest()).state == pb.SUCCEEDED
