"""Task environments end to end: a real pool, a real Docker worker building with uv, and a wheelhouse
of tiny wheels this test makes itself (tests/harness/wheels.py), with --offline: no package index.

Each lock carries a comment with a random word, so its environment is new to this machine's Docker
engine (environment images outlive a test's state dir); each test prunes what it built."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness.env_worker import SECRET, EnvWorker
from harness.wheels import make_wheel
from harness.worker_fixtures import remove_task_containers

from hivemind_nodepool.client import PoolClient
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.environment import LOCK_PATH, WHEELS_DIR

from .helpers import bundle, notebook, stdout_of, submit, user, wait_for, wait_state

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PRINT_VERSIONS = (
    "import hmdemo_alpha, hmdemo_beta\nprint('versions', hmdemo_alpha.__version__, hmdemo_beta.__version__)"
)


def lock(*pins: str) -> bytes:
    return ("".join(f"{pin}\n" for pin in pins) + f"# test {os.urandom(6).hex()}\n").encode()


def environment(mode: str = "auto", python: str = "", **fields: object) -> pb.Environment:
    version = python or f"{sys.version_info[0]}.{sys.version_info[1]}.{sys.version_info[2]}"
    return pb.Environment(mode=mode, python_version=version, **fields)  # type: ignore[arg-type]


def run(
    client: PoolClient, code: str, files: dict[str, bytes], env: pb.Environment | None = None
) -> tuple[pb.Task, list[pb.TaskEvent]]:
    extra = {"environment": env if env is not None else environment()}
    task = submit(client, bundle(notebook(code), files), max_retries=0, **extra)
    final = wait_state(client, task.id, timeout=300)
    return final, list(client.watch(task.id, follow=False))


def notices(events: list[pb.TaskEvent]) -> list[str]:
    return [e.text for e in events if e.kind == pb.TaskEvent.NOTICE]


def steps(events: list[pb.TaskEvent]) -> list[str]:
    return [
        json.loads(e.data_json).get("step", "")
        for e in events
        if e.kind == pb.TaskEvent.PHASE and e.text == "environment" and e.data_json
    ]


def test_a_lock_runs_and_a_second_identical_task_builds_nothing(pool, env_worker: EnvWorker) -> None:
    alice = user(pool)
    files = {LOCK_PATH: lock("hmdemo-alpha==1.0", "hmdemo-beta==2.0")}
    first, events = run(alice, PRINT_VERSIONS, files)
    assert first.state == pb.SUCCEEDED, first.error
    assert "versions 1.0 2.0" in stdout_of(events)
    said = steps(events)
    assert said[:3] == ["resolving", "downloading 2 packages", "installing"], said
    assert said[3].startswith("ready in "), said
    assert any("new environment built on env-worker" in text for text in notices(events)), notices(events)

    second, events = run(alice, PRINT_VERSIONS, files)
    assert second.state == pb.SUCCEEDED, second.error
    assert "versions 1.0 2.0" in stdout_of(events)
    assert "environment cached on env-worker" in notices(events)
    assert "resolving" not in steps(events)
    built = [row for row in env_worker.environments() if not row["failed"]]
    assert len(built) == 1 and built[0]["packages"] == 2, built

    def reported() -> pb.EnvironmentCacheStats | None:
        with pool.admin() as admin:
            record = next(w for w in admin.list_workers() if w.id == env_worker.process.worker_id)
        stats = record.env_cache
        return stats if stats.hits == 1 and stats.builds == 1 else None

    stats = wait_for(reported, 30, "the heartbeat to report one build and one hit")
    assert stats.environments == 1 and stats.size_bytes > 0
    # The environment image keeps no build settings: the index URL's credentials stay out of it.
    image = json.loads(
        subprocess.run(
            ["docker", "image", "inspect", str(built[0]["ref"])], capture_output=True, text=True, check=True
        ).stdout
    )[0]
    assert SECRET not in json.dumps(image["Config"])


def test_an_environment_sharing_all_but_one_package_downloads_only_that_one(
    pool, env_worker: EnvWorker
) -> None:
    alice = user(pool)
    first, _ = run(alice, PRINT_VERSIONS, {LOCK_PATH: lock("hmdemo-alpha==1.0", "hmdemo-beta==2.0")})
    assert first.state == pb.SUCCEEDED, first.error
    before = env_worker.archives()
    code = PRINT_VERSIONS + "\nimport hmdemo_delta\nprint('delta', hmdemo_delta.__version__)"
    files = {LOCK_PATH: lock("hmdemo-alpha==1.0", "hmdemo-beta==2.0", "hmdemo-delta==1.0")}
    second, events = run(alice, code, files)
    assert second.state == pb.SUCCEEDED, second.error
    assert "delta 1.0" in stdout_of(events)
    assert "downloading 1 package" in steps(events), steps(events)
    assert len(env_worker.archives() - before) == 1, "more than the one new package entered uv's cache"


def test_a_wheel_in_the_bundle_is_installed_and_imported(pool, env_worker: EnvWorker, tmp_path: Path) -> None:
    alice = user(pool)
    wheel = make_wheel(tmp_path / "mine", "hmlocal_pkg", "0.1.dev3", source="ANSWER = 42\n")
    files = {LOCK_PATH: lock("hmlocal-pkg==0.1.dev3"), f"{WHEELS_DIR}/{wheel.name}": wheel.read_bytes()}
    final, events = run(alice, "import hmlocal_pkg\nprint('answer', hmlocal_pkg.ANSWER)", files)
    assert final.state == pb.SUCCEEDED, final.error
    assert "answer 42" in stdout_of(events)


def test_another_python_is_said_and_a_pin_without_a_build_for_it_fails(pool, env_worker: EnvWorker) -> None:
    alice = user(pool)
    ours = f"{sys.version_info[0]}.{sys.version_info[1]}"
    files = {LOCK_PATH: lock("hmdemo-alpha==1.1", "hmdemo-beta==2.0")}
    final, events = run(alice, PRINT_VERSIONS, files, environment(python="3.99.1"))
    assert final.state == pb.SUCCEEDED, final.error
    assert "versions 1.1 2.0" in stdout_of(events)
    said = f"this worker runs Python {ours}, your kernel 3.99: the same pins are resolved for {ours}"
    assert said in notices(events), notices(events)

    final, _ = run(alice, "1", {LOCK_PATH: lock("hmdemo-gamma==1.0")}, environment(python="3.99.1"))
    assert final.state == pb.FAILED
    assert f"hmdemo-gamma 1.0 has no build for Python {ours}" in final.error, final.error
    assert "your kernel runs Python 3.99" in final.error, final.error

    # Asked to run only on 3.99, the task waits, saying why.
    task = submit(alice, bundle(notebook("1")), environment=environment(python="3.99.1", require_python=True))
    waiting = wait_for(lambda: alice.get_task(task.id).pending_reason, 30, "a pending reason")
    assert waiting == f"needs Python 3.99; no online worker runs it (they run {ours})", waiting
    alice.cancel_task(task.id)


def test_env_none_runs_bare(pool, env_worker: EnvWorker) -> None:
    alice = user(pool)
    files = {LOCK_PATH: lock("hmdemo-alpha==1.0")}  # ignored in mode none
    code = "try:\n    import hmdemo_alpha\n    print('found')\nexcept ImportError:\n    print('bare')"
    final, events = run(alice, code, files, environment(mode="none"))
    assert final.state == pb.SUCCEEDED, final.error
    assert "bare" in stdout_of(events) and not steps(events)
    assert env_worker.environments() == []


def test_bad_input_fails_clearly_and_leaves_the_cache_as_it_was(
    pool, env_worker: EnvWorker, tmp_path: Path
) -> None:
    alice = user(pool)
    first, _ = run(alice, "1", {LOCK_PATH: lock("hmdemo-alpha==1.0")})
    assert first.state == pb.SUCCEEDED, first.error
    built = {row["key"] for row in env_worker.environments() if not row["failed"]}
    archives = env_worker.archives()
    zeros = "0" * 64
    cases: list[tuple[dict[str, bytes], str]] = [
        ({LOCK_PATH: lock("-e ./mine")}, "-e is not allowed"),
        ({LOCK_PATH: lock("--index-url http://elsewhere/simple")}, "--index-url is not allowed"),
        ({LOCK_PATH: lock("-r other.txt")}, "-r is not allowed"),
        (
            {LOCK_PATH: lock(f"hmdemo-alpha==1.1 --hash=sha256:{zeros}")},
            "the hash of hmdemo-alpha 1.1 does not match",
        ),
        ({LOCK_PATH: lock("hmdemo-alpha==9.9.9")}, "no version 9.9.9 of hmdemo-alpha"),
        ({LOCK_PATH: lock("hmdemo/alpha==1.0")}, "is a path or URL, not a package name"),
        ({LOCK_PATH: lock(*(f"hmdemo-p{i}==1.0" for i in range(5000)))}, "more than 2000 packages"),
        (
            {
                LOCK_PATH: lock("hmdemo-fake==1.0"),
                f"{WHEELS_DIR}/hmdemo_fake-1.0-py3-none-any.whl": b"not a zip",
            },
            "is not a wheel: it is not a zip archive",
        ),
    ]
    for files, reason in cases:
        final, events = run(alice, "print('never')", files)
        assert final.state == pb.FAILED, (reason, final.error)
        assert "environment" in final.error and reason in final.error, (reason, final.error)
        assert "never" not in stdout_of(events)
    assert {row["key"] for row in env_worker.environments() if not row["failed"]} == built
    assert env_worker.archives() == archives
    # The pin that does not exist fails fast the second time, without building, until pruned.
    final, events = run(alice, "1", {LOCK_PATH: cases[4][0][LOCK_PATH]})
    assert "failed to build on env-worker before" in final.error and "resolving" not in steps(events)
    failed = [row for row in env_worker.environments() if row["failed"]]
    assert len(failed) == 2  # the bad hash and the missing pin: both were tried
    assert "removed" in env_worker.env_cli("prune", str(failed[0]["key"])[:12])
    assert len([row for row in env_worker.environments() if row["failed"]]) == 1


def test_index_credentials_never_show(pool, runtime_image: None, tmp_path: Path) -> None:
    """Not offline, the build asks the index (which does not answer) and fails: its message, the
    events, the worker's log and env list name the index without its credentials."""
    worker = EnvWorker(pool, tmp_path, offline=False)
    worker.process.start()
    try:
        alice = user(pool)
        final, events = run(alice, "1", {LOCK_PATH: lock("hmdemo-zeta==1.0")})
        assert final.state == pb.FAILED and "environment could not be built" in final.error
        shown = final.error + json.dumps([e.text + e.data_json for e in events])
        shown += worker.process.log() + worker.env_cli("list") + worker.env_cli("list", "--json")
        assert "127.0.0.1:9" in shown  # the index is named ...
        assert SECRET not in shown  # ... without its credentials
    finally:
        worker.process.stop()
        remove_task_containers(worker.process.worker_id)
        worker.env_cli("prune")


def test_an_allow_listed_image_runs_and_another_waits(pool, runtime_image: None, tmp_path: Path) -> None:
    from hivemind_worker.image import runtime_tag

    allowed = f"hivemind-test-allowed:{os.urandom(4).hex()}"
    subprocess.run(["docker", "tag", runtime_tag(), allowed], check=True)
    worker = EnvWorker(pool, tmp_path, "--allow-image", allowed)
    try:
        worker.process.start()
        alice = user(pool)
        final, events = run(alice, "print('in the image')", {}, environment(mode="image", image=allowed))
        assert final.state == pb.SUCCEEDED, final.error
        assert "in the image" in stdout_of(events)
        task = submit(
            alice, bundle(notebook("1")), environment=environment(mode="image", image="lab/other:1")
        )
        waiting = wait_for(lambda: alice.get_task(task.id).pending_reason, 30, "a pending reason")
        assert waiting.startswith("needs image lab/other:1; no online worker allow-lists it"), waiting
        alice.cancel_task(task.id)
    finally:
        worker.process.stop()
        remove_task_containers(worker.process.worker_id)
        subprocess.run(["docker", "rmi", allowed], capture_output=True, check=False)


def test_the_worker_refuses_an_image_its_admin_did_not_allow(tmp_path: Path) -> None:
    """The scheduler sends no such task; a worker given one anyway refuses it before any Docker call."""
    from hivemind_worker.env_docker import DockerEnvironments
    from hivemind_worker.environment_request import IMAGE, EnvironmentRequest
    from hivemind_worker.errors import EnvironmentBuildError
    from hivemind_worker.uv import IndexSettings

    envs = DockerEnvironments(
        None, {}, tmp_path, 0, IndexSettings(tmp_path / "cache"), worker_name="w", allowed_images=("lab/a:1",)
    )
    with pytest.raises(EnvironmentBuildError, match=r"lab/b:1 is not allow-listed on w \(allowed: lab/a:1\)"):
        envs.image_ref(EnvironmentRequest(IMAGE, image="lab/b:1"))
