"""The daemon: identity and rejoin, drain on SIGTERM, live-output cap, CLI and settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness.worker import WorkerProcess
from harness.worker_fixtures import remove_task_containers

from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.errors import InvalidInput
from hivemind_worker.settings import load_settings

from .helpers import bundle, notebook, stdout_of, submit, user, wait_for, wait_state

SLOW = "import time\nprint('started', flush=True)\ntime.sleep(6)\nprint('finished', flush=True)"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hivemind_worker.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_identity_is_kept_and_reused_without_a_join_token(pool, tmp_path: Path) -> None:
    worker = WorkerProcess(pool, executor="local", state_dir=tmp_path / "state", name="keeper").start()
    first_id = worker.worker_id
    identity = tmp_path / "state" / "identity.json"
    assert identity.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert worker.stop() == 0
    # No join token this time: the saved credential is enough.
    again = WorkerProcess(
        pool, executor="local", state_dir=tmp_path / "state", name="keeper", join_token="not-a-valid-token"
    )
    again.start()
    try:
        assert again.worker_id == first_id
        with pool.admin() as admin:
            assert len([w for w in admin.list_workers() if w.name == "keeper"]) == 1
    finally:
        again.stop()


def test_the_same_state_dir_is_the_same_worker_when_the_pool_moved(pool, tmp_path: Path) -> None:
    """The pool restarted on another port (as `hivemind up --port 0` does): the worker's identity
    names the old address, so it registers with its join token, and is still the same worker."""
    state = tmp_path / "state"
    worker = WorkerProcess(pool, executor="local", state_dir=state, name="mover").start()
    first_id = worker.worker_id
    assert worker.stop() == 0
    old_address = pool.address
    pool.stop()
    pool.listen = "127.0.0.1:0"
    pool.start()
    assert pool.address != old_address
    worker.worker_id = ""
    worker.start()
    try:
        assert worker.worker_id == first_id
        with pool.admin() as admin:
            assert [w.id for w in admin.list_workers()] == [first_id]
        assert "joined" in worker.log() and "again" in worker.log()
    finally:
        worker.stop()


def test_drain_lets_running_work_finish(pool, tmp_path: Path) -> None:
    alice = user(pool)
    worker = WorkerProcess(pool, executor="local", name="drainer", extra_args=["--drain-grace", "60"]).start()
    task = submit(alice, bundle(notebook(SLOW)))
    wait_for(lambda: "started" in stdout_of(list(alice.watch(task.id, follow=False))), 60, "start")
    assert worker.stop(timeout=60) == 0
    final = wait_state(alice, task.id, timeout=10)
    assert final.state == pb.SUCCEEDED


def test_drain_past_the_grace_hands_the_task_back_without_a_retry(pool, tmp_path: Path) -> None:
    alice = user(pool)
    worker = WorkerProcess(pool, executor="local", name="leaver", extra_args=["--drain-grace", "1"]).start()
    task = submit(alice, bundle(notebook(SLOW)), max_retries=0)
    wait_for(lambda: "started" in stdout_of(list(alice.watch(task.id, follow=False))), 60, "start")
    assert worker.stop(timeout=60) == 0
    back = wait_state(alice, task.id, {pb.QUEUED}, timeout=20)
    assert back.retries_used == 0
    other = WorkerProcess(pool, executor="local", name="taker").start()
    try:
        final = wait_state(alice, task.id, timeout=60)
        assert final.state == pb.SUCCEEDED and final.attempt == 2 and final.retries_used == 0
    finally:
        other.stop()


def test_live_output_is_capped_with_a_visible_notice(pool, tmp_path: Path) -> None:
    alice = user(pool)
    worker = WorkerProcess(
        pool, executor="local", name="capped", env={"HIVEMIND_WORKER_MAX_OUTPUT_BYTES": "20000"}
    ).start()
    try:
        loud = "for i in range(3000):\n    print('line %05d ' % i + 'x' * 40)"
        task = submit(alice, bundle(notebook(loud, "print('after')")))
        final = wait_state(alice, task.id, timeout=60)
        assert final.state == pb.SUCCEEDED
        events = list(alice.watch(task.id, follow=False))
        streamed = stdout_of(events)
        assert len(streamed) <= 20000
        assert "line 00000" in streamed and "line 02999" not in streamed
        notices = [e.text for e in events if e.kind == pb.TaskEvent.NOTICE]
        assert any("output truncated" in text for text in notices), notices
    finally:
        worker.stop()


def test_cli_help_everywhere() -> None:
    for args in ([], ["run"], ["image"], ["image", "build"], ["doctor"]):
        result = _cli(*args, "--help")
        assert result.returncode == 0, (args, result.stderr)
        assert "usage: hivemind-worker" in result.stdout


def test_cli_bad_input_gets_clear_errors(tmp_path: Path) -> None:
    result = _cli("run", "--state-dir", str(tmp_path / "s"))
    assert result.returncode == 1 and "no pool address" in result.stderr
    result = _cli("run", "--pool", "127.0.0.1:1", "--executor", "local", "--state-dir", str(tmp_path / "s"))
    assert result.returncode == 1 and "join-token" in result.stderr
    config = tmp_path / "worker.toml"
    config.write_text("[worker]\nmax_cpus = 2\ncolour = 'blue'\n")
    result = _cli("run", "--config", str(config))
    assert result.returncode == 1 and "unknown setting 'colour'" in result.stderr
    config.write_text("not toml [")
    assert "not valid TOML" in _cli("doctor", "--config", str(config)).stderr
    result = _cli("run", "--pool", "x:1", "--max-memory", "lots")
    assert result.returncode == 2 and "not a size" in result.stderr
    result = _cli("run", "--pool", "x:1", "--labels", "novalue")
    assert result.returncode == 2 and "bad label" in result.stderr


def test_settings_layers_flags_win(tmp_path: Path) -> None:
    config = tmp_path / "worker.toml"
    config.write_text(
        '[worker]\npool = "file:1"\nmax_memory = "4G"\nlabels = {room = "b12"}\ndrain_grace = "2m"\n'
    )
    env = {"HIVEMIND_WORKER_POOL": "env:2", "HIVEMIND_WORKER_MAX_CPUS": "3"}
    settings = load_settings(config, {"pool": "flag:3"}, environ=env)
    assert settings.pool == "flag:3"
    assert settings.max_cpus == 3.0 and settings.max_memory == 4 * 1024**3
    assert settings.labels == {"room": "b12"} and settings.drain_grace == 120.0
    assert load_settings(config, {}, environ=env).pool == "env:2"
    with pytest.raises(InvalidInput):
        load_settings(None, {"executor": "kubernetes"}, environ={})
    labels = load_settings(None, {"labels": "gpu=a100, room = 2"}, environ={}).labels
    assert labels == {"gpu": "a100", "room": "2"}


def test_facts_module_prints_json() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hivemind_worker.facts"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    facts = json.loads(result.stdout)
    assert facts["cpu_cores"] >= 1 and facts["memory_bytes"] > 0
    assert isinstance(facts["gpus"], list)


def test_doctor_reports_what_to_fix(pool, tmp_path: Path) -> None:
    result = _cli("doctor", "--executor", "local", "--pool", pool.address, "--state-dir", str(tmp_path / "s"))
    assert "[  ok] pool" in result.stdout
    assert "not joined yet" in result.stdout and result.returncode == 1
    result = _cli(
        "doctor",
        "--executor",
        "docker",
        "--image",
        "hivemind-runtime:does-not-exist",
        "--state-dir",
        str(tmp_path / "s"),
    )
    assert result.returncode == 1
    assert "image build" in result.stdout or "Docker engine does not answer" in result.stdout


@pytest.mark.docker
@pytest.mark.slow
def test_two_tasks_with_the_same_new_requirements_build_once(pool, runtime_image, tmp_path: Path) -> None:
    from harness.env_worker import EnvWorker

    from .helpers import EXTRA_PACKAGE

    alice = user(pool)
    builder = EnvWorker(pool, tmp_path)
    worker = builder.process.start()
    try:
        # A comment makes a requirements file nobody built before, so this run builds it.
        requirements = f"{EXTRA_PACKAGE}  # {os.urandom(6).hex()}\n".encode()
        data = bundle(
            notebook("import hmdemo_delta\nprint(hmdemo_delta.__version__)"),
            {"requirements.txt": requirements},
        )
        tasks = [submit(alice, data, cpus=0.5), submit(alice, data, cpus=0.5)]
        finals = [wait_state(alice, t.id, timeout=300) for t in tasks]
        assert all(f.state == pb.SUCCEEDED for f in finals), [f.error for f in finals]
        builds = [
            e.text
            for t in tasks
            for e in alice.watch(t.id, follow=False)
            if e.kind == pb.TaskEvent.NOTICE and "new environment" in e.text
        ]
        assert len(builds) == 1, builds
    finally:
        worker.stop()
        remove_task_containers(worker.worker_id)
        builder.env_cli("prune")
