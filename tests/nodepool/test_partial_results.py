"""A cancelled task keeps what its attempt produced so far: the attempt that was running when the
user cancelled may upload its result (outcome CANCELLED) once; every other late report stays refused."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest
from harness import FakeWorker, PoolProcess
from harness.fake_worker import make_result_zip

from hivemind_nodepool.client import PoolClient
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.errors import Conflict, InvalidInput, NotFound

from .helpers import submit, wait_for


def _cancelled_while_running(alice: PoolClient, worker: FakeWorker) -> tuple[pb.Task, pb.Assignment]:
    """A task the worker runs, cancelled by its owner; the worker got the cancel order."""
    task = submit(alice)
    assignment = worker.next_assignment()
    worker.status(assignment, pb.PREPARING)
    worker.status(assignment, pb.RUNNING)
    assert alice.cancel_task(task.id).state == pb.CANCELLED
    order = worker.next_message("cancel").cancel
    assert (order.task_id, order.attempt) == (task.id, assignment.attempt)
    return alice.get_task(task.id), assignment


def _fetched(client: PoolClient, task_id: str, tmp_path: Path) -> dict[str, bytes]:
    target = client.fetch_result(task_id, tmp_path / f"{task_id}.zip")
    with zipfile.ZipFile(target) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_the_cancelled_attempt_uploads_its_result_so_far(
    alice: PoolClient, worker: FakeWorker, tmp_path: Path
) -> None:
    before, assignment = _cancelled_while_running(alice, worker)
    assert before.result_sha256 == ""
    partial = make_result_zip(tmp_path / "partial.zip", "two cells of five")
    answer = worker.finish(assignment, pb.CANCELLED, partial, error="cancelled by alice")
    assert answer.state == pb.CANCELLED
    assert answer.result_sha256 == hashlib.sha256(partial.read_bytes()).hexdigest()
    after = alice.get_task(before.id)
    # Only the result was added: the state, its timeline, the error and the attempt are as they were.
    assert after.state == pb.CANCELLED and after.attempt == before.attempt
    assert after.error == before.error and after.worker_id == before.worker_id
    assert [(t.state, t.message) for t in after.timeline] == [(t.state, t.message) for t in before.timeline]
    assert after.last_event_seq == before.last_event_seq
    assert after.result_size == partial.stat().st_size
    assert _fetched(alice, before.id, tmp_path)["outputs/result.txt"] == b"two cells of five"


def test_a_second_upload_is_refused_and_the_first_result_stays(
    alice: PoolClient, worker: FakeWorker, tmp_path: Path
) -> None:
    task, assignment = _cancelled_while_running(alice, worker)
    first = worker.finish(assignment, pb.CANCELLED, make_result_zip(tmp_path / "first.zip", "first"))
    worker.running[task.id] = assignment.attempt
    with pytest.raises(Conflict, match="ended"):
        worker.finish(assignment, pb.CANCELLED, make_result_zip(tmp_path / "second.zip", "second"))
    assert alice.get_task(task.id).result_sha256 == first.result_sha256
    assert _fetched(alice, task.id, tmp_path)["outputs/result.txt"] == b"first"


@pytest.mark.parametrize("outcome", [pb.SUCCEEDED, pb.FAILED, pb.TIMED_OUT])
def test_any_other_outcome_for_a_cancelled_task_is_refused(
    alice: PoolClient, worker: FakeWorker, tmp_path: Path, outcome: int
) -> None:
    task, assignment = _cancelled_while_running(alice, worker)
    with pytest.raises(Conflict, match="ended"):
        worker.finish(assignment, outcome, make_result_zip(tmp_path / "claim.zip"))
    final = alice.get_task(task.id)
    assert final.state == pb.CANCELLED and final.result_sha256 == ""


def test_a_hand_back_or_an_empty_upload_of_a_cancelled_task_is_refused(
    alice: PoolClient, worker: FakeWorker, tmp_path: Path
) -> None:
    task, assignment = _cancelled_while_running(alice, worker)
    with pytest.raises(Conflict):
        worker.finish(assignment, pb.CANCELLED, make_result_zip(tmp_path / "back.zip"), requeue=True)
    with pytest.raises(Conflict, match="ended"):
        worker.finish(assignment, pb.CANCELLED, None)
    final = alice.get_task(task.id)
    assert final.state == pb.CANCELLED and final.result_sha256 == ""
    # Refusals spent nothing: the real partial result is still welcome.
    assert worker.finish(assignment, pb.CANCELLED, make_result_zip(tmp_path / "ok.zip")).result_sha256


def test_another_worker_cannot_upload_for_a_cancelled_task(
    pool: PoolProcess, alice: PoolClient, worker: FakeWorker, tmp_path: Path
) -> None:
    task, assignment = _cancelled_while_running(alice, worker)
    intruder = FakeWorker(pool.address, pool.join_token(), name="intruder").connect()
    try:
        with pytest.raises(Conflict, match="stale"):
            intruder.finish(assignment, pb.CANCELLED, make_result_zip(tmp_path / "intruder.zip"))
    finally:
        intruder.close()
    assert alice.get_task(task.id).result_sha256 == ""


def test_an_older_attempt_cannot_upload_after_the_current_one_was_cancelled(
    pool: PoolProcess, alice: PoolClient, tmp_path: Path
) -> None:
    token = pool.join_token()
    first = FakeWorker(pool.address, token, name="first").connect()
    second = None
    try:
        task = submit(alice)
        old = first.next_assignment()
        first.status(old, pb.RUNNING)
        first.heartbeating = False  # lost: attempt 1 is stale from now on
        wait_for(lambda: alice.get_task(task.id).state == pb.QUEUED, timeout=15, what="the requeue")
        second = FakeWorker(pool.address, token, name="second").connect()
        current = second.next_assignment()
        assert current.attempt == old.attempt + 1
        second.status(current, pb.RUNNING)
        alice.cancel_task(task.id)
        with pytest.raises(Conflict, match="stale"):
            first.finish(old, pb.CANCELLED, make_result_zip(tmp_path / "old.zip", "old"))
        assert alice.get_task(task.id).result_sha256 == ""
        kept = second.finish(current, pb.CANCELLED, make_result_zip(tmp_path / "current.zip", "current"))
        assert kept.result_sha256 and kept.state == pb.CANCELLED
        assert _fetched(alice, task.id, tmp_path)["outputs/result.txt"] == b"current"
    finally:
        first.close()
        if second is not None:
            second.close()


def test_a_task_cancelled_before_it_was_placed_takes_no_result(
    pool: PoolProcess, alice: PoolClient, tmp_path: Path
) -> None:
    task = submit(alice, cpus=64)  # no worker is that big: it stays QUEUED
    alice.cancel_task(task.id)
    worker = FakeWorker(pool.address, pool.join_token(), name="late").connect()
    try:
        fake = pb.Assignment(task_id=task.id, attempt=0)
        with pytest.raises(Conflict):
            worker.finish(fake, pb.CANCELLED, make_result_zip(tmp_path / "none.zip"))
        with pytest.raises(NotFound):
            alice.fetch_result(task.id, tmp_path / "nothing.zip")
    finally:
        worker.close()


def test_a_partial_result_is_checked_like_any_result(
    alice: PoolClient, worker: FakeWorker, tmp_path: Path
) -> None:
    task, assignment = _cancelled_while_running(alice, worker)
    header = pb.ResultHeader(task_id=task.id, attempt=assignment.attempt, outcome=pb.CANCELLED)
    good = make_result_zip(tmp_path / "good.zip").read_bytes()

    def upload(data: bytes, claimed: str) -> pb.Task:
        parts = iter(
            [
                pb.UploadResultRequest(header=header),
                pb.UploadResultRequest(chunk=data),
                pb.UploadResultRequest(sha256=claimed),
            ]
        )
        return worker.client._unary(worker.client._gateway.UploadResult, parts)

    with pytest.raises(InvalidInput, match="sha256"):
        upload(good, "0" * 64)
    slip = io.BytesIO()
    with zipfile.ZipFile(slip, "w") as archive:
        archive.writestr("../escape.txt", "out")
    with pytest.raises(InvalidInput, match="refused"):
        upload(slip.getvalue(), hashlib.sha256(slip.getvalue()).hexdigest())
    assert alice.get_task(task.id).result_sha256 == ""
    assert upload(good, hashlib.sha256(good).hexdigest()).result_sha256
