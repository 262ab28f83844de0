"""Placement: pick_worker, explain, dominant_share, and the scheduler's fairness, in process."""

from __future__ import annotations

import pytest

from hivemind_nodepool.pool.fleet import Amount
from hivemind_nodepool.pool.scheduler import dominant_share, explain, labels_match, pick_worker
from hivemind_nodepool.proto import nodepool_pb2 as pb

from .pool_parts import GiB, Pool, manifest, worker

# -- pick_worker ---------------------------------------------------------------------------------


def test_nothing_fits_an_empty_fleet() -> None:
    assert pick_worker(Amount(1, GiB), {}, []) is None


def test_a_fitting_worker_is_picked() -> None:
    only = worker("w1", cpus=4, memory=8 * GiB)
    assert pick_worker(Amount(4, 8 * GiB), {}, [only]) is only  # exactly the whole machine


@pytest.mark.parametrize(
    "want", [Amount(5, GiB), Amount(1, 9 * GiB), Amount(1, GiB, 1)], ids=["cpus", "memory", "gpus"]
)
def test_a_request_larger_than_any_worker_is_not_placed(want: Amount) -> None:
    assert pick_worker(want, {}, [worker("w1", cpus=4, memory=8 * GiB)]) is None


def test_capacity_in_use_is_never_given_twice() -> None:
    busy = worker("w1", cpus=4, memory=8 * GiB, used=Amount(3, 2 * GiB))
    assert pick_worker(Amount(2, GiB), {}, [busy]) is None  # 1 CPU free
    assert pick_worker(Amount(1, 7 * GiB), {}, [busy]) is None  # 6 GiB free
    assert pick_worker(Amount(1, 6 * GiB), {}, [busy]) is busy


def test_what_this_pass_already_planned_counts_as_used() -> None:
    w = worker("w1", cpus=4)
    assert pick_worker(Amount(2, GiB), {}, [w], planned={"w1": Amount(3, GiB)}) is None
    assert pick_worker(Amount(1, GiB), {}, [w], planned={"w1": Amount(3, GiB)}) is w
    assert pick_worker(Amount(2, GiB), {}, [w], planned={"other": Amount(4, GiB)}) is w


def test_fractional_cpus_add_up_without_rounding_errors() -> None:
    w = worker("w1", cpus=1, used=Amount(0.1, 0) + Amount(0.2, 0))  # 0.30000000000000004
    assert pick_worker(Amount(0.7, GiB), {}, [w]) is w
    assert pick_worker(Amount(0.71, GiB), {}, [w]) is None


@pytest.mark.parametrize(
    "unavailable",
    [
        worker("w1", state=pb.WORKER_DRAINING),
        worker("w1", state=pb.WORKER_OFFLINE),
        worker("w1", state=pb.WORKER_LOST),
        worker("w1", connected=False),  # online in the database, but its stream is closed
    ],
    ids=["draining", "offline", "lost", "disconnected"],
)
def test_only_connected_online_workers_take_work(unavailable) -> None:
    assert pick_worker(Amount(1, GiB), {}, [unavailable]) is None
    online = worker("w2", cpus=1)
    assert pick_worker(Amount(1, GiB), {}, [unavailable, online]) is online


def test_labels_must_all_match() -> None:
    plain = worker("w1", cpus=16)
    zone_a = worker("w2", cpus=2, labels={"zone": "a", "disk": "ssd"})
    zone_b = worker("w3", cpus=8, labels={"zone": "b", "disk": "ssd"})
    fleet = [plain, zone_a, zone_b]
    assert pick_worker(Amount(1, GiB), {"zone": "a"}, fleet) is zone_a
    assert pick_worker(Amount(1, GiB), {"zone": "a", "disk": "ssd"}, fleet) is zone_a
    assert pick_worker(Amount(1, GiB), {"disk": "ssd"}, fleet) is zone_b  # more free CPUs
    assert pick_worker(Amount(1, GiB), {"zone": "a", "disk": "hdd"}, fleet) is None
    assert pick_worker(Amount(1, GiB), {"zone": "c"}, fleet) is None
    assert pick_worker(Amount(4, GiB), {"zone": "a"}, fleet) is None  # the match is too small


def test_labels_match() -> None:
    assert labels_match({}, {})
    assert labels_match({}, {"zone": "a"})
    assert labels_match({"zone": "a"}, {"zone": "a", "extra": "x"})
    assert not labels_match({"zone": "a"}, {"zone": "A"})
    assert not labels_match({"zone": "a"}, {})
    assert not labels_match({"zone": ""}, {})  # an empty value is still a value to carry


def test_work_spreads_to_the_worker_with_most_free_cpus() -> None:
    small, large = worker("w1", cpus=4), worker("w2", cpus=8)
    assert pick_worker(Amount(1, GiB), {}, [small, large]) is large
    large.allocations[("t-x", 1)] = Amount(6, GiB)  # 2 free now, against 4
    assert pick_worker(Amount(1, GiB), {}, [small, large]) is small


def test_gpu_machines_are_kept_for_gpu_work() -> None:
    cpu_box = worker("w1", cpus=4)
    gpu_box = worker("w2", cpus=32, gpus=2)
    assert pick_worker(Amount(1, GiB), {}, [gpu_box, cpu_box]) is cpu_box
    assert pick_worker(Amount(1, GiB, 1), {}, [gpu_box, cpu_box]) is gpu_box
    cpu_box.allocations[("t-x", 1)] = Amount(4, GiB)  # full: CPU work may use the GPU machine then
    assert pick_worker(Amount(1, GiB), {}, [gpu_box, cpu_box]) is gpu_box


def test_equal_workers_are_picked_in_a_stable_order() -> None:
    fleet = [worker("w-b"), worker("w-a"), worker("w-c")]
    assert pick_worker(Amount(1, GiB), {}, fleet).worker_id == "w-a"
    assert pick_worker(Amount(1, GiB), {}, list(reversed(fleet))).worker_id == "w-a"


# -- explain -------------------------------------------------------------------------------------


def test_explain_without_an_online_worker() -> None:
    assert explain(Amount(1, GiB), {}, []) == "no worker is online"
    assert explain(Amount(1, GiB), {}, [worker("w1", connected=False)]) == "no worker is online"
    assert (
        explain(Amount(1, GiB), {}, [worker("w1", state=pb.WORKER_DRAINING)])
        == "no worker is online (the connected ones are draining)"
    )


def test_explain_missing_labels_lists_them_sorted() -> None:
    fleet = [worker("w1", labels={"zone": "b"})]
    assert (
        explain(Amount(1, GiB), {"zone": "a", "gpu": "a100"}, fleet)
        == "needs labels gpu=a100, zone=a; no online worker has them"
    )


def test_explain_names_each_resource_that_no_worker_has() -> None:
    fleet = [worker("w1", cpus=4, memory=8 * GiB), worker("w2", cpus=8, memory=4 * GiB)]
    assert explain(Amount(16, GiB), {}, fleet) == "needs 16 CPUs, the largest worker has 8"
    assert explain(Amount(8.5, GiB), {}, fleet) == "needs 8.5 CPUs, the largest worker has 8"
    assert explain(Amount(1, 64 * GiB), {}, fleet) == (
        "needs 64.0 GiB of memory, the largest worker has 8.0 GiB"
    )
    assert explain(Amount(1, GiB, 1), {}, fleet) == "needs 1 GPU, the largest worker has 0"
    assert explain(Amount(16, 64 * GiB, 2), {}, fleet) == (
        "needs 16 CPUs, the largest worker has 8; "
        "needs 64.0 GiB of memory, the largest worker has 8.0 GiB; "
        "needs 2 GPUs, the largest worker has 0"
    )


def test_explain_looks_only_at_workers_with_the_labels() -> None:
    fleet = [worker("big", cpus=64), worker("tagged", cpus=2, labels={"zone": "a"})]
    assert explain(Amount(4, GiB), {"zone": "a"}, fleet) == "needs 4 CPUs, the largest worker has 2"


def test_explain_when_no_single_worker_has_all() -> None:
    fleet = [worker("w1", cpus=8, memory=2 * GiB), worker("w2", cpus=2, memory=16 * GiB)]
    assert explain(Amount(4, 8 * GiB), {}, fleet) == "no single worker has all of: 4 CPUs, 8.0 GiB memory"


def test_explain_when_the_fitting_workers_are_busy() -> None:
    fleet = [worker("w1", cpus=4, gpus=1, used=Amount(4, GiB))]
    assert explain(Amount(1, GiB), {}, fleet) == "all fitting workers are busy (needs 1 CPU, 1.0 GiB memory)"
    assert explain(Amount(2, GiB, 1), {}, fleet) == (
        "all fitting workers are busy (needs 2 CPUs, 1.0 GiB memory, 1 GPU)"
    )


# -- dominant_share ------------------------------------------------------------------------------


def test_dominant_share_is_the_largest_fraction() -> None:
    total = Amount(8, 16 * GiB, 4)
    assert dominant_share(Amount(2, GiB, 0), total) == 0.25  # CPUs
    assert dominant_share(Amount(1, 8 * GiB, 0), total) == 0.5  # memory
    assert dominant_share(Amount(1, GiB, 3), total) == 0.75  # GPUs
    assert dominant_share(Amount(), total) == 0.0
    assert dominant_share(total, total) == 1.0


def test_dominant_share_of_a_resource_the_pool_lacks_is_zero() -> None:
    assert dominant_share(Amount(1, GiB, 2), Amount(4, 4 * GiB, 0)) == 0.25
    assert dominant_share(Amount(1, GiB, 1), Amount()) == 0.0  # an empty pool divides by nothing


def test_the_per_task_disk_limit_decides_and_explains() -> None:
    small = worker("small", cpus=8, task_disk=10 * GiB)
    large = worker("large", cpus=2, task_disk=50 * GiB)
    assert pick_worker(Amount(1, GiB), {}, [small, large], disk=20 * GiB) is large
    assert pick_worker(Amount(1, GiB), {}, [small, large], disk=5 * GiB) is small  # more free CPUs
    assert pick_worker(Amount(1, GiB), {}, [small, large], disk=60 * GiB) is None
    assert explain(Amount(1, GiB), {}, [small, large], disk=60 * GiB) == (
        "needs 60.0 GiB of disk, the largest worker offers 50.0 GiB per task"
    )
    # Per task: two tasks of 40 GiB both fit a 50 GiB worker (the limit is never summed).
    large.allocations[("t-other", 1)] = Amount(1, GiB)
    assert pick_worker(Amount(1, GiB), {}, [large], disk=40 * GiB) is large
    # A disk request and the CPUs fit only on different workers.
    assert explain(Amount(4, GiB), {}, [small, large], disk=20 * GiB) == (
        "no single worker has all of: 4 CPUs, 1.0 GiB memory, 20.0 GiB disk"
    )
    # A worker that states no limit takes any request.
    silent = worker("silent", cpus=2)
    assert pick_worker(Amount(1, GiB), {}, [silent], disk=10 * 1024 * GiB) is silent


# -- the scheduling pass: fairness, priority, age ------------------------------------------------


async def test_a_pass_alternates_between_users_by_share(parts: Pool) -> None:
    parts.join(worker("w1", cpus=2, memory=8 * GiB))
    ada = [await parts.submit("ada") for _ in range(3)]  # older, all of them
    bob = await parts.submit("bob")
    assert await parts.scheduler.cycle() == 2
    # Age alone would give both CPUs to ada; her first task raised her share above bob's.
    assert parts.states(*ada, bob) == ["ASSIGNED", "QUEUED", "QUEUED", "ASSIGNED"]
    assert parts.task(ada[1])["pending_reason"].startswith("all fitting workers are busy")


async def test_fair_share_comes_before_priority(parts: Pool) -> None:
    w = parts.join(worker("w1", cpus=2, memory=8 * GiB))
    first = await parts.submit("ada")
    assert await parts.scheduler.cycle() == 1  # ada holds half the pool now
    urgent = await parts.submit("ada", manifest(priority=10))
    later = await parts.submit("bob", manifest(priority=0))
    assert await parts.scheduler.cycle() == 1
    assert parts.states(first, urgent, later) == ["ASSIGNED", "QUEUED", "ASSIGNED"]
    assert set(w.allocations) == {(first, 1), (later, 1)}


async def test_priority_comes_before_age_between_equal_shares(parts: Pool) -> None:
    parts.join(worker("w1", cpus=1, memory=8 * GiB))
    old = await parts.submit("ada", manifest(priority=0))
    new = await parts.submit("bob", manifest(priority=5))
    assert await parts.scheduler.cycle() == 1
    assert parts.states(old, new) == ["QUEUED", "ASSIGNED"]


async def test_priority_orders_one_users_tasks(parts: Pool) -> None:
    parts.join(worker("w1", cpus=1, memory=8 * GiB))
    old = await parts.submit("ada", manifest(priority=0))
    new = await parts.submit("ada", manifest(priority=5))
    assert await parts.scheduler.cycle() == 1
    assert parts.states(old, new) == ["QUEUED", "ASSIGNED"]


async def test_age_decides_between_equals(parts: Pool) -> None:
    parts.join(worker("w1", cpus=1, memory=8 * GiB))
    old = await parts.submit("bob")
    new = await parts.submit("ada")
    assert await parts.scheduler.cycle() == 1
    assert parts.states(old, new) == ["ASSIGNED", "QUEUED"]


async def test_a_pass_never_overcommits_and_later_passes_refill(parts: Pool) -> None:
    w = parts.join(worker("w1", cpus=3, memory=8 * GiB))
    tasks = [await parts.submit("ada", manifest(cpus=1, memory=2 * GiB)) for _ in range(5)]
    assert await parts.scheduler.cycle() == 3
    assert w.free.cpus == 0 and w.free.memory == 2 * GiB
    assert await parts.scheduler.cycle() == 0  # nothing freed: nothing more placed
    assert parts.states(*tasks).count("ASSIGNED") == 3
    done = next(t for t in tasks if parts.task(t)["state"] == pb.ASSIGNED)
    await parts.book.finish("w1", pb.ResultHeader(task_id=done, attempt=1, outcome=pb.SUCCEEDED), None)
    assert await parts.scheduler.cycle() == 1
    assert parts.states(*tasks).count("ASSIGNED") == 3 and parts.states(done) == ["SUCCEEDED"]
    assert w.free.cpus == 0


async def test_a_pass_places_by_labels_and_explains_the_rest(parts: Pool) -> None:
    parts.join(worker("plain", cpus=16))
    tagged = parts.join(worker("tagged", cpus=2, labels={"gpu": "a100"}))
    fits = await parts.submit("ada", manifest(labels={"gpu": "a100"}))
    nowhere = await parts.submit("ada", manifest(labels={"gpu": "h100"}))
    assert await parts.scheduler.cycle() == 1
    assert parts.task(fits)["worker_id"] == "tagged" and (fits, 1) in tagged.allocations
    assert parts.task(nowhere)["pending_reason"] == "needs labels gpu=h100; no online worker has them"


async def test_a_pass_places_by_disk_and_explains_a_request_no_worker_offers(parts: Pool) -> None:
    parts.join(worker("small", cpus=8, task_disk=10 * GiB))
    parts.join(worker("large", cpus=2, task_disk=50 * GiB))
    fits = await parts.submit("ada", manifest(disk=20 * GiB))
    nowhere = await parts.submit("ada", manifest(disk=80 * GiB))
    assert await parts.scheduler.cycle() == 1
    assert parts.task(fits)["worker_id"] == "large"
    assert parts.task(nowhere)["state"] == pb.QUEUED
    assert parts.task(nowhere)["pending_reason"] == (
        "needs 80.0 GiB of disk, the largest worker offers 50.0 GiB per task"
    )


async def test_a_pass_skips_draining_and_offline_workers(parts: Pool) -> None:
    parts.join(worker("draining", cpus=8, state=pb.WORKER_DRAINING))
    parts.join(worker("offline", cpus=8, state=pb.WORKER_OFFLINE, connected=False))
    task = await parts.submit("ada")
    assert await parts.scheduler.cycle() == 0
    assert parts.task(task)["pending_reason"] == "no worker is online (the connected ones are draining)"
    online = parts.join(worker("online", cpus=1))
    assert await parts.scheduler.cycle() == 1
    assert parts.task(task)["worker_id"] == "online" and (task, 1) in online.allocations


async def test_an_assignment_is_sent_to_its_worker(parts: Pool) -> None:
    w = parts.join(worker("w1"))
    task = await parts.submit("ada")
    await parts.scheduler.cycle()
    assert w.outbox is not None
    message = w.outbox.get_nowait()
    assert message is not None and message.assignment.task_id == task and message.assignment.attempt == 1


# -- Python versions and images ------------------------------------------------------------------


def _runs(entry, pythons: tuple[str, ...] = (), images: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    entry.facts.python_versions.extend(pythons)
    entry.facts.images.extend(images)
    return entry


def test_a_required_python_goes_only_where_it_runs_and_otherwise_is_preferred() -> None:
    from hivemind_nodepool.pool.scheduler import Runtime

    old = _runs(worker("w-old", cpus=8), ("3.11",))
    new = _runs(worker("w-new", cpus=2), ("3.12",))
    fleet = [old, new]
    want = Amount(1, GiB)
    assert pick_worker(want, {}, fleet) is old  # more free CPUs
    assert pick_worker(want, {}, fleet, runtime=Runtime("3.12")) is new  # preferred
    assert pick_worker(want, {}, fleet, runtime=Runtime("3.13")) is old  # none has it: any
    assert pick_worker(want, {}, fleet, runtime=Runtime("3.13", required=True)) is None
    assert explain(want, {}, fleet, runtime=Runtime("3.13", required=True)) == (
        "needs Python 3.13; no online worker runs it (they run 3.11, 3.12)"
    )


def test_an_image_goes_only_to_workers_that_allow_list_it() -> None:
    from hivemind_nodepool.pool.scheduler import Runtime

    plain = worker("w-plain", cpus=8)
    lab = _runs(worker("w-lab", cpus=2), ("3.11",), ("lab/x:1",))
    want = Amount(1, GiB)
    assert pick_worker(want, {}, [plain, lab], runtime=Runtime(image="lab/x:1")) is lab
    assert pick_worker(want, {}, [plain, lab], runtime=Runtime(image="lab/y:1")) is None
    assert explain(want, {}, [plain, lab], runtime=Runtime(image="lab/y:1")).startswith(
        "needs image lab/y:1; no online worker allow-lists it"
    )
    from hivemind_nodepool.protocol.placement import fits_no_worker

    assert fits_no_worker(explain(want, {}, [plain], runtime=Runtime("3.13", required=True)))


def test_the_runtime_is_read_from_the_manifest() -> None:
    from hivemind_nodepool.pool.scheduler import Runtime

    assert Runtime.of(pb.Manifest()) == Runtime()
    env = pb.Environment(mode="auto", python_version="3.12.4", require_python=True)
    assert Runtime.of(pb.Manifest(environment=env)) == Runtime("3.12", True, "")
    env = pb.Environment(mode="image", image="lab/x:1", python_version="3.11.2")
    assert Runtime.of(pb.Manifest(environment=env)) == Runtime("3.11", False, "lab/x:1")
