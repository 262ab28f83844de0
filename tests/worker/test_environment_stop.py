"""A task stopped while its environment is being built stops the build: a real pool and a real Docker
worker (and the local builder on its own), with a package index on 127.0.0.1 that answers nothing
until the test lets it. So the build is
certainly still waiting on the index when the task is cancelled; what the test checks happened before
the index ever answered. The packages themselves come from the test's wheelhouse once the index
answers 404 (uv then finds them in --find-links)."""

from __future__ import annotations

import contextlib
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.env_worker import EnvWorker
from harness.worker_fixtures import remove_task_containers

from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.environment import LOCK_PATH

from .helpers import bundle, notebook, stdout_of, submit, user, wait_for, wait_state
from .test_environments import PRINT_VERSIONS, environment

HOLD_LIMIT = 300.0  # a test that fails leaves no request hanging for ever


class _HeldIndex(http.server.ThreadingHTTPServer):
    """Holds every request until `release` is set, then answers 404; counts the requests."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HeldHandler)
        self.release = threading.Event()
        self.requests = 0
        self.answered = 0
        self.count_lock = threading.Lock()


class _HeldHandler(http.server.BaseHTTPRequestHandler):
    server: _HeldIndex

    def do_GET(self) -> None:
        with self.server.count_lock:
            self.server.requests += 1
        self.server.release.wait(HOLD_LIMIT)
        with self.server.count_lock:
            self.server.answered += 1
        with contextlib.suppress(OSError):  # a build that was stopped no longer listens
            self.send_error(404, "no such package")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def held_index() -> Iterator[_HeldIndex]:
    server = _HeldIndex()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


def build_containers(cache: Path) -> list[Any]:
    """This worker's environment build containers (running or not), told apart from other workers'
    on the same engine by the package cache they mount."""
    import docker

    client = docker.from_env()
    try:
        found = client.containers.list(all=True, filters={"label": "org.hivemind.role=env-build"})
        source = str(cache.resolve())
        return [c for c in found if any(m.get("Source") == source for m in c.attrs.get("Mounts", []))]
    finally:
        client.close()


def running_on(pool: Any, worker_id: str) -> set[str]:
    with pool.admin() as admin:
        record = next(w for w in admin.list_workers() if w.id == worker_id)
    return set(record.running_task_ids)


@pytest.mark.docker
@pytest.mark.slow
def test_a_cancel_stops_the_build_and_a_task_waiting_for_it_builds_it_afresh(
    pool, runtime_image: None, held_index: _HeldIndex, tmp_path: Path
) -> None:
    port = held_index.server_address[1]
    worker = EnvWorker(pool, tmp_path, offline=False, index_url=f"http://127.0.0.1:{port}/simple")
    worker.process.start()
    try:
        alice = user(pool)
        lock = f"hmdemo-alpha==1.0\nhmdemo-beta==2.0\n# test {os.urandom(6).hex()}\n".encode()
        env = environment()
        data = bundle(notebook(PRINT_VERSIONS), {LOCK_PATH: lock})
        first = submit(alice, data, max_retries=0, environment=env)
        wait_for(lambda: held_index.requests, 120, "the first build to ask the index")
        building = build_containers(worker.cache)
        assert len(building) == 1, building
        second = submit(alice, data, max_retries=0, environment=env)  # waits for the same key's build
        wait_for(
            lambda: second.id in running_on(pool, worker.process.worker_id), 60, "the second task to start"
        )

        asked = held_index.requests
        alice.cancel_task(first.id)
        assert alice.get_task(first.id).state == pb.CANCELLED
        # The worker ends the attempt, and its build container is gone, with the index still silent.
        wait_for(
            lambda: first.id not in running_on(pool, worker.process.worker_id), 60, "the first attempt to end"
        )
        wait_for(
            lambda: building[0].id not in {c.id for c in build_containers(worker.cache)},
            30,
            "its container to go",
        )
        # The waiting task builds it itself: its own build container asks the index again.
        wait_for(lambda: held_index.requests > asked, 60, "the second task's build to ask the index")
        assert held_index.answered == 0, "the index answered before the test let it"
        assert not [row for row in worker.environments() if row["failed"]], (
            "the stopped build was remembered as failed"
        )

        held_index.release.set()
        final = wait_state(alice, second.id, timeout=180)
        assert final.state == pb.SUCCEEDED, final.error
        assert "versions 1.0 2.0" in stdout_of(list(alice.watch(second.id, follow=False)))
        rows = worker.environments()
        assert [row["failed"] for row in rows] == [False], rows
        wait_for(lambda: build_containers(worker.cache) == [], 60, "the build container to be removed")
        assert alice.get_task(first.id).state == pb.CANCELLED
    finally:
        held_index.release.set()
        worker.process.stop()
        remove_task_containers(worker.process.worker_id)
        worker.env_cli("prune")


@pytest.mark.docker
@pytest.mark.slow
def test_a_build_that_outlasts_the_tasks_timeout_ends_it_timed_out(
    pool, runtime_image: None, held_index: _HeldIndex, tmp_path: Path
) -> None:
    """The task's --timeout covers its build: with the index silent the build cannot end, so only
    the timeout can stop it; the task ends TIMED_OUT naming the build and what to do, its build
    container goes, and nothing is remembered as failed."""
    port = held_index.server_address[1]
    worker = EnvWorker(pool, tmp_path, offline=False, index_url=f"http://127.0.0.1:{port}/simple")
    worker.process.start()
    try:
        alice = user(pool)
        lock = f"hmdemo-alpha==1.0\n# test {os.urandom(6).hex()}\n".encode()
        data = bundle(notebook("print('never')"), {LOCK_PATH: lock})
        task = submit(alice, data, max_retries=0, timeout=3, environment=environment())
        final = wait_state(alice, task.id, timeout=120)
        assert final.state == pb.TIMED_OUT, (pb.TaskState.Name(final.state), final.error)
        assert "timeout (3s) ran out while its environment was being built" in final.error, final.error
        for advice in ("--timeout", "fewer packages", "pre-built image"):
            assert advice in final.error, final.error
        assert held_index.requests and held_index.answered == 0, "the build was not waiting on the index"
        assert "never" not in stdout_of(list(alice.watch(task.id, follow=False)))
        wait_for(lambda: build_containers(worker.cache) == [], 60, "the build container to go")
        assert not [row for row in worker.environments() if row["failed"]], "remembered as failed"
    finally:
        held_index.release.set()
        worker.process.stop()
        remove_task_containers(worker.process.worker_id)
        worker.env_cli("prune")


def test_a_stop_ends_a_local_build_and_a_wait_for_it(held_index: _HeldIndex, tmp_path: Path) -> None:
    """The local executor's builder: the uv process is killed, its half-made venv removed, nothing
    remembered; a second user waiting on the same key's lock stops too when told, and a later use
    builds it afresh once the index answers."""
    from harness.wheels import demo_wheelhouse

    from hivemind_nodepool.protocol.environment import check_requirements
    from hivemind_worker.env_local import LocalEnvironments
    from hivemind_worker.environment_request import LOCK, EnvironmentRequest
    from hivemind_worker.environments import QuietReport
    from hivemind_worker.errors import BuildStopped
    from hivemind_worker.uv import IndexSettings

    port = held_index.server_address[1]
    index = IndexSettings(
        tmp_path / "uv-cache",
        index_url=f"http://127.0.0.1:{port}/simple",
        find_links=demo_wheelhouse(tmp_path / "wheels"),
    )
    envs = LocalEnvironments(tmp_path / "venvs", 10**10, index)
    text = "hmdemo-alpha==1.0\n"
    wanted = EnvironmentRequest(LOCK, text=text.encode(), requirements=tuple(check_requirements(text)))
    stops = [threading.Event(), threading.Event()]
    ended: list[BaseException | None] = [None, None]

    def use(number: int) -> None:
        try:
            with envs.use(wanted, QuietReport(), stops[number]):
                pass
        except BaseException as exc:
            ended[number] = exc

    builder = threading.Thread(target=use, args=(0,))
    builder.start()
    wait_for(lambda: held_index.requests, 60, "the build to ask the index")
    waiter = threading.Thread(target=use, args=(1,))
    waiter.start()
    stops[1].set()  # the one waiting on the lock stops without waiting for the build
    waiter.join(timeout=30)
    assert not waiter.is_alive() and isinstance(ended[1], BuildStopped), ended[1]
    stops[0].set()
    builder.join(timeout=30)
    assert not builder.is_alive() and isinstance(ended[0], BuildStopped), ended[0]
    assert held_index.answered == 0, "the index answered before the test let it"
    assert not list((tmp_path / "venvs" / "venvs").iterdir()), "the half-made venv was kept"
    assert envs.known_failures() == {} and envs.entries() == {}

    held_index.release.set()
    with envs.use(wanted, QuietReport(), threading.Event()) as python:
        assert Path(python).exists()
    assert envs.builds == 1
