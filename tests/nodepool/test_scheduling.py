"""Placement: fit, labels, no overcommit, fair share between users, priority, and pending reasons."""

from __future__ import annotations

import contextlib

from harness import FakeWorker, PoolProcess

from hivemind_nodepool.proto import nodepool_pb2 as pb

from .helpers import GiB, submit, wait_for


def reason_of(client, task_id: str) -> str:  # type: ignore[no-untyped-def]
    return client.get_task(task_id).pending_reason


def test_pending_reasons_per_resource(pool: PoolProcess) -> None:
    admin = pool.admin()
    task = submit(admin, cpus=1)
    wait_for(lambda: reason_of(admin, task.id) == "no worker is online", what="the no-worker reason")
    worker = FakeWorker(
        pool.address, pool.join_token(), cpus=4, memory=8 * GiB, gpus=1, labels={"site": "lab1"}
    ).connect()
    try:
        assert worker.next_assignment().task_id == task.id
        gpus = submit(admin, cpus=1, gpus=2)
        big = submit(admin, cpus=8, memory=64 * GiB)
        labelled = submit(admin, cpus=1, labels={"site": "lab2"})
        wait_for(
            lambda: reason_of(admin, gpus.id) == "needs 2 GPUs, the largest worker has 1", what="gpu reason"
        )
        wait_for(
            lambda: "needs 8 CPUs, the largest worker has 4" in reason_of(admin, big.id), what="cpu reason"
        )
        assert "needs 64.0 GiB of memory, the largest worker has 8.0 GiB" in reason_of(admin, big.id)
        wait_for(
            lambda: reason_of(admin, labelled.id) == "needs labels site=lab2; no online worker has them",
            what="label reason",
        )
        listed = {t.id: t.pending_reason for t in admin.list_tasks(states=[pb.QUEUED]).tasks}
        assert listed[gpus.id] == "needs 2 GPUs, the largest worker has 1"
        busy = submit(admin, cpus=4)
        wait_for(
            lambda: reason_of(admin, busy.id).startswith("all fitting workers are busy"),
            what="busy reason",
        )
    finally:
        worker.close()


def test_fit_and_no_overcommit(pool: PoolProcess, tmp_path) -> None:  # type: ignore[no-untyped-def]
    admin = pool.admin()
    tasks = [submit(admin, cpus=2, memory=GiB) for _ in range(3)]
    worker = FakeWorker(pool.address, pool.join_token(), cpus=4, memory=8 * GiB).connect()
    try:
        first = worker.next_assignment()
        second = worker.next_assignment()
        assert {first.task_id, second.task_id} == {tasks[0].id, tasks[1].id}
        wait_for(
            lambda: reason_of(admin, tasks[2].id).startswith("all fitting workers are busy"),
            what="third task waiting",
        )
        (state,) = admin.list_workers()
        assert state.allocated.cpus == 4 and state.capacity.cpus == 4
        assert admin.get_task(tasks[2].id).state == pb.QUEUED
        worker.run_to_success(first)
        third = worker.next_assignment()
        assert third.task_id == tasks[2].id
        assert admin.get_task(tasks[2].id).pending_reason == ""
    finally:
        worker.close()


def test_many_tasks_many_workers_never_overcommit(pool: PoolProcess) -> None:
    admin = pool.admin()
    sizes = [(1, 1), (2, 2), (3, 1), (1, 4), (2, 3)] * 6
    tasks = {submit(admin, cpus=c, memory=m * GiB).id: (c, m) for c, m in sizes}
    token = pool.join_token()
    workers = [
        FakeWorker(pool.address, token, name=f"w{i}", cpus=cpus, memory=mem * GiB).connect()
        for i, (cpus, mem) in enumerate([(4, 8), (3, 4), (6, 6)])
    ]
    try:
        done = 0
        while done < len(tasks):
            for snapshot in admin.list_workers():
                assert snapshot.allocated.cpus <= snapshot.capacity.cpus + 1e-9
                assert snapshot.allocated.memory_bytes <= snapshot.capacity.memory_bytes
            progressed = False
            for worker in workers:
                try:
                    assignment = worker.next_assignment(timeout=0.2)
                except TimeoutError:
                    continue
                worker.run_to_success(assignment)
                done += 1
                progressed = True
            if not progressed:
                counts = admin.pool_status().tasks_by_state
                assert counts.get("QUEUED", 0) + counts.get("ASSIGNED", 0) > 0 or done == len(tasks)
        assert admin.pool_status().tasks_by_state["SUCCEEDED"] == len(tasks)
    finally:
        for worker in workers:
            worker.close()


def test_fair_share_between_two_users(pool: PoolProcess) -> None:
    pool.add_user("alice", "alice-password")
    pool.add_user("bob", "bob-password1")
    alice = pool.login("alice", "alice-password")
    bob = pool.login("bob", "bob-password1")
    alice_tasks = [submit(alice, cpus=1).id for _ in range(6)]
    bob_tasks = [submit(bob, cpus=1).id for _ in range(3)]
    owner = {**dict.fromkeys(alice_tasks, "alice"), **dict.fromkeys(bob_tasks, "bob")}
    worker = FakeWorker(pool.address, pool.join_token(), cpus=2, memory=8 * GiB).connect()
    try:
        order = []
        running = [worker.next_assignment(), worker.next_assignment()]
        assert {owner[a.task_id] for a in running} == {"alice", "bob"}  # one slot each, not alice's backlog
        while running:
            finished = running.pop(0)
            order.append(owner[finished.task_id])
            worker.run_to_success(finished)
            with contextlib.suppress(TimeoutError):
                running.append(worker.next_assignment(timeout=3))
        assert sorted(order) == ["alice"] * 6 + ["bob"] * 3
        # Bob's three tasks all ran before Alice's backlog was through.
        assert order.index("bob") < 2 and len(order) - 1 - order[::-1].index("bob") < 6
    finally:
        worker.close()


def test_priority_within_one_user(pool: PoolProcess) -> None:
    admin = pool.admin()
    low = submit(admin, cpus=1, priority=0)
    high = submit(admin, cpus=1, priority=10)
    worker = FakeWorker(pool.address, pool.join_token(), cpus=1).connect()
    try:
        assert worker.next_assignment().task_id == high.id
        assert admin.get_task(low.id).state == pb.QUEUED
    finally:
        worker.close()
