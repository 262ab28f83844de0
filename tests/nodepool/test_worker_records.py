"""The pool's record of workers: a worker joining again as itself, removing offline workers
(`hivemind-nodepool worker remove`, local and remote), and users not seeing workers gone long ago."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import FakeWorker, PoolProcess

from hivemind_nodepool.client import PoolClient
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.errors import Conflict, Unauthenticated
from hivemind_nodepool.protocol.rejoin import rejoin_proof

from .helpers import submit, wait_for

ADMIN = [sys.executable, "-m", "hivemind_nodepool.cli.admin"]


def state(admin: PoolClient, worker_id: str) -> int:
    return next(w.state for w in admin.list_workers() if w.id == worker_id)


def refused(address: str, credential: str, worker_id: str) -> bool:
    """Whether the pool refuses this worker credential (its Connect stream ends UNAUTHENTICATED)."""
    fake = FakeWorker(address, "", credential=credential, worker_id=worker_id)
    try:
        fake.connect()
        return False
    except TimeoutError:
        return isinstance(fake.stream_error, Unauthenticated)
    finally:
        fake.close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ADMIN, *args], capture_output=True, text=True, timeout=60, check=False)


def test_a_proven_identity_joins_again_as_the_same_worker(pool: PoolProcess) -> None:
    admin = pool.admin()
    first = FakeWorker(pool.address, pool.join_token(), name="box").connect()
    first.disconnect()
    wait_for(lambda: state(admin, first.worker_id) == pb.WORKER_OFFLINE, what="offline")
    again = PoolClient(pool.address)
    token = pool.join_token()
    answer = again.register_worker(token, "box", first.facts, (first.worker_id, first.credential))
    assert answer.worker_id == first.worker_id and answer.credential != first.credential
    assert [w.id for w in admin.list_workers()] == [first.worker_id]
    # The old credential stopped working; the new one works.
    assert refused(pool.address, first.credential, first.worker_id)
    assert not refused(pool.address, answer.credential, first.worker_id)


def test_a_wrong_proof_or_a_connected_worker_does_not_take_an_identity(pool: PoolProcess) -> None:
    admin = pool.admin()
    first = FakeWorker(pool.address, pool.join_token(), name="box").connect()
    token = pool.join_token()
    # Connected: a second daemon on the same state dir is refused, the first keeps its identity.
    with pytest.raises(Conflict, match="connected already"):
        PoolClient(pool.address).register_worker(
            token, "box", first.facts, (first.worker_id, first.credential)
        )
    first.disconnect()
    wait_for(lambda: state(admin, first.worker_id) == pb.WORKER_OFFLINE, what="offline")
    # A proof made for another join token, or from another credential, registers a new worker.
    stranger = PoolClient(pool.address)
    request_proof = rejoin_proof(first.credential, "another-token")
    assert request_proof != rejoin_proof(first.credential, token)
    answer = stranger.register_worker(token, "box", first.facts, (first.worker_id, "not-the-credential"))
    assert answer.worker_id != first.worker_id
    assert len(admin.list_workers()) == 2


def test_a_revoked_worker_does_not_become_itself_again(pool: PoolProcess) -> None:
    admin = pool.admin()
    first = FakeWorker(pool.address, pool.join_token(), name="box").connect()
    admin.revoke_worker(first.worker_id)
    first.close()
    answer = PoolClient(pool.address).register_worker(
        pool.join_token(), "box", first.facts, (first.worker_id, first.credential)
    )
    assert answer.worker_id != first.worker_id
    revoked = next(w for w in admin.list_workers() if w.id == first.worker_id)
    assert revoked.state == pb.WORKER_REVOKED


@pytest.fixture
def admin_token(pool: PoolProcess) -> str:
    client = pool.admin()
    assert client.token
    return client.token


def test_worker_remove_refuses_online_and_removes_offline(pool: PoolProcess, admin_token: str) -> None:
    admin = pool.admin()
    online = FakeWorker(pool.address, pool.join_token(), name="online").connect()
    gone = FakeWorker(pool.address, pool.join_token(), name="gone").connect()
    gone.disconnect()
    wait_for(lambda: state(admin, gone.worker_id) == pb.WORKER_OFFLINE, what="offline")
    remote = ["--pool", pool.address, "--token", admin_token]

    for where in (remote, ["--data-dir", str(pool.data_dir)]):
        answer = cli("worker", "remove", online.worker_id, *where)
        assert answer.returncode == 1, answer.stderr
        assert f"worker online ({online.worker_id}) is online" in answer.stderr, answer.stderr
        assert "stop it first" in answer.stderr and "Traceback" not in answer.stderr
    assert state(admin, online.worker_id) == pb.WORKER_ONLINE

    removed = cli("worker", "remove", gone.worker_id, *remote)
    assert removed.returncode == 0, removed.stderr
    assert f"removed worker {gone.worker_id} (gone, offline)" in removed.stdout
    assert [w.id for w in admin.list_workers()] == [online.worker_id]
    assert admin.pool_status().workers_total == 1
    missing = cli("worker", "remove", gone.worker_id, *remote)
    assert missing.returncode == 1 and "no worker" in missing.stderr
    # Its credential no longer opens a stream.
    assert refused(pool.address, gone.credential, gone.worker_id)
    online.close()


def test_worker_remove_on_the_local_files(pool: PoolProcess) -> None:
    admin = pool.admin()
    gone = FakeWorker(pool.address, pool.join_token(), name="gone").connect()
    gone.disconnect()
    wait_for(lambda: state(admin, gone.worker_id) == pb.WORKER_OFFLINE, what="offline")
    pool.stop()  # the row says what the pool last saw
    removed = cli("worker", "remove", gone.worker_id, "--data-dir", str(pool.data_dir))
    assert removed.returncode == 0, removed.stderr
    status = json.loads(cli("status", "--json", "--data-dir", str(pool.data_dir)).stdout)
    assert status["workers"] == []


def test_a_worker_holding_tasks_is_not_removed(tmp_path: Path) -> None:
    with PoolProcess(tmp_path / "pool", heartbeat_timeout=60) as slow_pool:
        admin = slow_pool.admin()
        slow_pool.add_user("ada", "ada-password-1")
        ada = slow_pool.login("ada", "ada-password-1")
        holder = FakeWorker(slow_pool.address, slow_pool.join_token(), name="holder").connect()
        task = submit(ada)
        holder.next_assignment()
        holder.disconnect()  # offline, its task held for its return until the heartbeat timeout
        wait_for(lambda: state(admin, holder.worker_id) == pb.WORKER_OFFLINE, what="offline")
        with pytest.raises(Conflict, match=r"still holds 1 task\(s\)"):
            admin.remove_worker(holder.worker_id)
        assert ada.get_task(task.id).worker_id == holder.worker_id


@pytest.fixture
def quick_hiding(tmp_path: Path) -> Iterator[PoolProcess]:
    with PoolProcess(tmp_path / "pool", extra_args=["--offline-worker-hidden-after", "1s"]) as process:
        yield process


def test_users_stop_seeing_workers_that_left_long_ago(quick_hiding: PoolProcess) -> None:
    pool = quick_hiding
    admin = pool.admin()
    pool.add_user("ada", "ada-password-1")
    ada = pool.login("ada", "ada-password-1")
    here = FakeWorker(pool.address, pool.join_token(), name="here").connect()
    left = FakeWorker(pool.address, pool.join_token(), name="left").connect()
    assert {w.name for w in ada.list_workers()} == {"here", "left"}
    left.disconnect()
    wait_for(lambda: state(admin, left.worker_id) == pb.WORKER_OFFLINE, what="offline")
    time.sleep(1.5)  # past offline_worker_hidden_after
    assert [w.name for w in ada.list_workers()] == ["here"]
    status = ada.pool_status()
    assert (status.workers_online, status.workers_total) == (1, 1)  # not "1 of 2 workers online"
    assert {w.name for w in admin.list_workers()} == {"here", "left"}  # admins see every worker
    assert admin.pool_status().workers_total == 2
    here.close()
