"""Bad, hostile and huge input to every RPC: a clear status, and nothing stored."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import zipfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from harness import FakeWorker, PoolProcess

from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.proto import nodepool_pb2_grpc as pb_grpc
from hivemind_nodepool.protocol.errors import (
    Conflict,
    HiveMindError,
    InvalidInput,
    NotFound,
    ResultRefused,
    TooLarge,
)

from .helpers import GiB, bundle_bytes, manifest, submit


def nothing_stored(pool: PoolProcess) -> None:
    db = sqlite3.connect(pool.data_dir / "pool.db")
    try:
        assert db.execute("SELECT count(*) FROM tasks").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM blobs").fetchone()[0] == 0
    finally:
        db.close()
    blobs = pool.data_dir / "blobs"
    stored = [p for p in blobs.rglob("*") if p.is_file()] if blobs.exists() else []
    assert stored == []


def raw_submit(pool: PoolProcess, token: str, parts: list[pb.SubmitRequest]) -> grpc.RpcError:
    channel = grpc.insecure_channel(pool.address)
    stub = pb_grpc.NodePoolStub(channel)
    try:
        stub.SubmitTask(iter(parts), metadata=(("authorization", f"Bearer {token}"),), timeout=30)
    except grpc.RpcError as exc:
        return exc
    finally:
        channel.close()
    raise AssertionError("the submission was accepted")


BAD_MANIFESTS: list[tuple[dict, str]] = [
    ({"entry_notebook": ""}, "no entry notebook"),
    ({"entry_notebook": "main.py"}, "not a .ipynb"),
    ({"entry_notebook": "../main.ipynb"}, "relative path"),
    ({"entry_notebook": "/etc/main.ipynb"}, "relative path"),
    ({"cpus": -1}, "non-negative"),
    ({"cpus": float("nan")}, "non-negative"),
    ({"cpus": 5000}, "more than any machine"),
    ({"memory": -5}, "negative"),
    ({"memory": 17 * 1024**4}, "16 TiB"),
    ({"gpus": -1}, "negative"),
    ({"gpus": 65}, "more than any machine"),
    ({"disk": -1}, "disk cannot be negative"),
    ({"disk": 2 * 1024**5}, "1 PiB"),
    ({"parameters_json": "[1, 2]"}, "JSON object"),
    ({"parameters_json": "{not json"}, "not valid JSON"),
    ({"parameters_json": '{"not an identifier": 1}'}, "identifier"),
    ({"timeout_seconds": -1}, "negative"),
    ({"timeout_seconds": 10**9}, "longer than the pool allows"),
    ({"max_retries": 99}, "max_retries"),
    ({"name": "x" * 500}, "longer than"),
    ({"labels": {"bad key!": "v"}}, "label name"),
    ({"outputs": ["../escape/**"]}, "climb"),
    ({"pull_variables": ["1abc"]}, "identifier"),
    ({"priority": 10**6}, "priority"),
]


def test_malformed_manifests_are_refused(pool: PoolProcess) -> None:
    admin = pool.admin()
    for case, message in BAD_MANIFESTS:
        fields = dict(case)
        resources = {k: fields.pop(k) for k in ("cpus", "memory", "gpus", "disk") if k in fields}
        with pytest.raises(InvalidInput, match=message):
            admin.submit(manifest(**resources, **fields), io.BytesIO(bundle_bytes()))
    nothing_stored(pool)


def test_unknown_entry_notebook(pool: PoolProcess) -> None:
    admin = pool.admin()
    with pytest.raises(InvalidInput, match=r"not in the bundle.*main\.ipynb"):
        admin.submit(manifest(entry_notebook="other.ipynb"), io.BytesIO(bundle_bytes()))
    nothing_stored(pool)


def test_wrong_sha256_missing_sha_and_bad_order(pool: PoolProcess) -> None:
    admin = pool.admin()
    assert admin.token
    data = bundle_bytes()
    head = pb.SubmitRequest(manifest=manifest())
    cases = {
        "mismatch": [head, pb.SubmitRequest(chunk=data), pb.SubmitRequest(sha256="0" * 64)],
        "64 hex": [head, pb.SubmitRequest(chunk=data), pb.SubmitRequest(sha256="xyz")],
        "without its sha256": [head, pb.SubmitRequest(chunk=data)],
        "starts with the manifest": [pb.SubmitRequest(chunk=data)],
        "exactly one manifest": [head, head],
        "nothing may follow": [
            head,
            pb.SubmitRequest(chunk=data),
            pb.SubmitRequest(sha256=hashlib.sha256(data).hexdigest()),
            pb.SubmitRequest(chunk=b"x"),
        ],
        "empty": [head, pb.SubmitRequest(sha256=hashlib.sha256(b"").hexdigest())],
        "empty submission": [],
    }
    for message, parts in cases.items():
        error = raw_submit(pool, admin.token, parts)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, message
        assert message in (error.details() or ""), (message, error.details())
    nothing_stored(pool)


def hostile_zips() -> Iterator[tuple[str, bytes]]:
    def build(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("main.ipynb", "{}")
            for info, data in entries:
                archive.writestr(info, data)
        return buffer.getvalue()

    link = zipfile.ZipInfo("link")
    link.external_attr = 0o120777 << 16
    yield "climbs out", build([("../evil.py", b"x")])
    yield "absolute", build([("/etc/passwd", b"x")])
    yield "symbolic link", build([(link, b"/etc/passwd")])
    device = zipfile.ZipInfo("dev")
    device.external_attr = 0o020666 << 16
    yield "appears twice", build([("a.txt", b"1"), ("./a.txt", b"2")])
    yield "not a regular file", build([(device, b"")])
    yield "not a readable ZIP", b"this is not a zip file at all"
    # Names that differ only in case, and data that compresses well, are ordinary: not refused
    # (test_ordinary_bundles_are_accepted).


def test_hostile_zips_are_refused(pool: PoolProcess) -> None:
    admin = pool.admin()
    for message, data in hostile_zips():
        with pytest.raises(InvalidInput, match=message):
            admin.submit(manifest(), io.BytesIO(data))
    nothing_stored(pool)


def test_ordinary_bundles_are_accepted(pool: PoolProcess) -> None:
    admin = pool.admin()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("main.ipynb", "{}")
        archive.writestr("a.txt", b"1")
        archive.writestr("A.TXT", b"2")
        archive.writestr("back\\slash.txt", b"3")
        archive.writestr("zeros.bin", b"\0" * (50 * 1024 * 1024))
    assert admin.submit(manifest(), io.BytesIO(buffer.getvalue())).state == pb.QUEUED


def test_oversize_upload_with_a_small_limit(tmp_path: Path) -> None:
    extra = ["--max-bundle-size", "64K", "--max-result-size", "3M"]
    pool = PoolProcess(tmp_path / "pool", extra_args=extra).start()
    try:
        admin = pool.admin()
        worker = FakeWorker(pool.address, pool.join_token()).connect()
        assert worker.welcome is not None and worker.welcome.max_result_bytes == 3 * 1024**2
        worker.close()
        big = bundle_bytes(extra={"data.bin": hashlib.sha512(b"x").digest() * 4096})
        with pytest.raises(TooLarge, match="larger than the pool's limit of 65536"):
            admin.submit(manifest(), io.BytesIO(big))
        nothing_stored(pool)
        assert submit(admin).state == pb.QUEUED  # small ones still go through
    finally:
        pool.stop()


def test_bad_calls_on_every_user_rpc(pool: PoolProcess) -> None:
    admin = pool.admin()
    for call in (
        lambda: admin.get_task(""),
        lambda: admin.get_task("x" * 10_000),
        lambda: admin.cancel_task("nope"),
        lambda: admin.retry_task("nope"),
        lambda: list(admin.watch("nope", follow=False)),
        lambda: admin.fetch_result("nope", "/tmp/never"),
    ):
        with pytest.raises(NotFound):
            call()
    task = submit(admin)
    with pytest.raises(InvalidInput):
        list(admin.watch(task.id, after_seq=-1, follow=False))
    with pytest.raises(NotFound, match="no result"):
        admin.fetch_result(task.id, "/tmp/never")
    with pytest.raises(Conflict):
        admin.retry_task(task.id)  # still queued
    for kwargs in ({"page_size": -1}, {"page_token": "abc"}, {"states": [99]}):
        with pytest.raises(InvalidInput):
            admin.list_tasks(**kwargs)
    assert admin.list_tasks(page_size=10_000).total == 1  # clamped, not refused
    with pytest.raises(InvalidInput):
        admin.create_join_token(ttl_seconds=-5)
    with pytest.raises(InvalidInput):
        pool.client().login("admin", "x" * 5000)
    with pytest.raises(NotFound):
        admin.drain_worker("w-nothere")
    with pytest.raises(NotFound):
        admin.disable_user("nobody")


def test_paging(pool: PoolProcess) -> None:
    admin = pool.admin()
    ids = [submit(admin).id for _ in range(7)]
    first = admin.list_tasks(page_size=3)
    assert first.total == 7 and len(first.tasks) == 3 and first.next_page_token
    assert {t.id for t in admin.iter_tasks()} == set(ids)
    admin.cancel_task(ids[0])
    assert [t.id for t in admin.list_tasks(states=[pb.CANCELLED]).tasks] == [ids[0]]


def test_retry_makes_a_new_task_from_the_same_bundle(pool: PoolProcess) -> None:
    admin = pool.admin()
    task = submit(admin)
    admin.cancel_task(task.id)
    retried = admin.retry_task(task.id)
    assert retried.id != task.id and retried.retry_of == task.id
    assert retried.bundle_sha256 == task.bundle_sha256 and retried.state == pb.QUEUED


def test_bad_worker_input(pool: PoolProcess, tmp_path: Path) -> None:
    admin = pool.admin()
    token = pool.join_token()
    with pytest.raises(InvalidInput):
        FakeWorker(pool.address, token, cpus=-3)
    with pytest.raises(InvalidInput):
        FakeWorker(pool.address, token, labels={"bad key!": "x"})
    with pytest.raises(InvalidInput):
        FakeWorker(pool.address, token, name="x" * 500)
    with pytest.raises(InvalidInput, match="per-task disk"):
        FakeWorker(pool.address, token, task_disk=-1)
    worker = FakeWorker(pool.address, token).connect()
    try:
        task = submit(admin)
        assignment = worker.next_assignment()
        client = worker.client
        with pytest.raises(InvalidInput):
            client.report_status(pb.StatusReport(task_id=task.id, attempt=1, state=pb.SUCCEEDED))
        with pytest.raises(InvalidInput):
            client.report_status(
                pb.StatusReport(
                    task_id=task.id,
                    attempt=1,
                    state=pb.RUNNING,
                    progress=pb.Progress(cells_done=5, cells_total=2),
                )
            )
        with pytest.raises(Conflict):
            client.report_status(pb.StatusReport(task_id=task.id, attempt=7, state=pb.RUNNING))
        with pytest.raises(NotFound):
            client.report_status(pb.StatusReport(task_id="t-nope", attempt=1, state=pb.RUNNING))
        for event in (
            pb.TaskEvent(seq=0, kind=pb.TaskEvent.STDOUT, text="x"),
            pb.TaskEvent(seq=1, kind=pb.TaskEvent.STATE, text="x"),
            pb.TaskEvent(seq=1, kind=pb.TaskEvent.STDOUT, text="x" * (300 * 1024)),
        ):
            with pytest.raises(InvalidInput):
                client.report_events(pb.EventBatch(task_id=task.id, attempt=1, events=[event]))
        too_many = pb.EventBatch(
            task_id=task.id,
            attempt=1,
            events=[pb.TaskEvent(seq=i + 1, kind=pb.TaskEvent.STDOUT) for i in range(1001)],
        )
        with pytest.raises(InvalidInput):
            client.report_events(too_many)
        gap = pb.EventBatch(
            task_id=task.id,
            attempt=1,
            events=[
                pb.TaskEvent(seq=1, kind=pb.TaskEvent.STDOUT, text="a"),
                pb.TaskEvent(seq=3, kind=pb.TaskEvent.STDOUT, text="c"),
            ],
        )
        assert client.report_events(gap) == 1  # stored up to the gap; the worker resends from 2
        with pytest.raises(InvalidInput):
            client.upload_result(pb.ResultHeader(task_id=task.id, attempt=1, outcome=pb.RUNNING), None)
        hostile = tmp_path / "hostile.zip"
        with zipfile.ZipFile(hostile, "w") as archive:
            archive.writestr("../../escape.txt", "x")
        assert admin.get_task(task.id).state == pb.ASSIGNED  # nothing changed so far
        # A result the pool refuses ends the task (tests/nodepool/test_result_refusal.py).
        with pytest.raises(ResultRefused, match="climbs out"):
            client.upload_result(pb.ResultHeader(task_id=task.id, attempt=1, outcome=pb.SUCCEEDED), hostile)
        refused = admin.get_task(task.id)
        assert refused.state == pb.FAILED and refused.error.startswith("the result was refused")
        with pytest.raises(Conflict, match="ended"):
            worker.finish(assignment, pb.FAILED, error="ZeroDivisionError: division by zero")
    finally:
        worker.close()


def test_manifest_json_round_trip() -> None:
    from hivemind_nodepool.protocol import manifest as manifests

    original = manifest(
        cpus=2, memory=4 * GiB, parameters_json=json.dumps({"alpha": 1}), labels={"gpu": "a100"}
    )
    text = manifests.to_json(original)
    assert json.loads(text)["parameters"] == {"alpha": 1}
    assert manifests.from_json(text) == original
    assert manifests.from_json('{"entry_notebook": "main.ipynb"}').max_retries == -1
    for bad in ("[1]", "{", '{"cpus": 1}', '{"resources": {"cpus": "many"}}'):
        with pytest.raises(HiveMindError):
            manifests.from_json(bad)


def test_a_page_of_huge_tasks_stays_under_the_message_limit(pool: PoolProcess) -> None:
    """Tasks may carry up to 1 MiB of parameters each; 500 of them would not fit one message, so
    a page ends early and says where to go on."""
    pool.add_user("big", "big-password")
    client = pool.login("big", "big-password")
    blob = json.dumps({"data": "x" * 900_000})
    ids = {submit(client, parameters_json=blob).id for _ in range(12)}
    first = client.list_tasks(page_size=500)
    assert 0 < len(first.tasks) < 12 and first.next_page_token and first.total == 12
    assert {task.id for task in client.iter_tasks()} == ids
