"""Operations: TLS, plaintext refusal, health, reflection, metrics, SIGTERM, settings, the admin CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from harness import FakeWorker, PoolProcess

from hivemind_nodepool.client import PoolClient
from hivemind_nodepool.pool.config import load_settings
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.errors import InvalidInput, PoolUnavailable

from .helpers import submit, wait_for

ADMIN = [sys.executable, "-m", "hivemind_nodepool.cli.admin"]


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ADMIN, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def test_tls_init_and_serve(tmp_path: Path) -> None:
    made = cli("tls", "init", "--dir", str(tmp_path / "tls"), "--host", "localhost", "--host", "127.0.0.1")
    assert made.returncode == 0, made.stderr
    tls = tmp_path / "tls"
    assert (tls / "server.key").stat().st_mode & 0o777 == 0o600
    assert cli("tls", "init", "--dir", str(tls)).returncode == 1  # never overwrites silently
    pool = PoolProcess(
        tmp_path / "pool",
        ca_file=tls / "ca.pem",
        extra_args=["--tls-cert", str(tls / "server.pem"), "--tls-key", str(tls / "server.key")],
    )
    pool.start()
    try:
        admin = pool.admin()
        assert admin.whoami().admin
        port = pool.address.rsplit(":", 1)[1]
        with PoolClient(f"localhost:{port}", ca_file=tls / "ca.pem") as by_name:
            by_name.login("admin", "admin-password-1")
        with PoolClient(pool.address, timeout=3) as plaintext, pytest.raises(PoolUnavailable):
            plaintext.login("admin", "admin-password-1")  # a plaintext client cannot talk to a TLS pool
        other = tmp_path / "other"
        assert cli("tls", "init", "--dir", str(other), "--host", "127.0.0.1").returncode == 0
        with (
            PoolClient(pool.address, ca_file=other / "ca.pem", timeout=3) as wrong_ca,
            pytest.raises(PoolUnavailable),
        ):
            wrong_ca.login("admin", "admin-password-1")  # a CA the pool's certificate does not chain to
    finally:
        pool.stop()


def test_plaintext_off_loopback_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [*ADMIN, "serve", "--listen", "0.0.0.0:0", "--data-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "refusing plaintext" in result.stderr and "--insecure" in result.stderr
    with pytest.raises(InvalidInput, match="refusing plaintext"):
        PoolClient("10.20.30.40:50051")


def test_a_taken_port_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = cli("serve", "--listen", address, "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 1
    assert f"hivemind-nodepool: error: cannot listen on {address}: the port is in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_health_and_reflection(pool: PoolProcess) -> None:
    with grpc.insecure_channel(pool.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "hivemind.nodepool.v1.NodePool", "hivemind.nodepool.v1.WorkerGateway"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for a in answers for s in a.list_services_response.service}
        assert {"hivemind.nodepool.v1.NodePool", "hivemind.nodepool.v1.WorkerGateway"} <= names


def test_metrics_endpoint(tmp_path: Path) -> None:
    pool = PoolProcess(tmp_path / "pool", extra_args=["--metrics-listen", "127.0.0.1:0"]).start()
    worker = None
    try:
        assert pool.metrics and pool.metrics.startswith("127.0.0.1:")
        admin = pool.admin()
        submit(admin, cpus=64)  # cannot be placed: stays queued
        worker = FakeWorker(pool.address, pool.join_token()).connect()
        submit(admin)
        worker.next_assignment()

        def scrape() -> str:
            with urllib.request.urlopen(f"http://{pool.metrics}/metrics", timeout=5) as answer:
                return answer.read().decode()

        text = str(wait_for(lambda: (t := scrape()) and "hivemind_workers_up 1.0" in t and t, what="metrics"))
        assert "hivemind_queue_depth 1.0" in text
        assert 'hivemind_tasks{state="ASSIGNED"} 1.0' in text
        assert "hivemind_scheduling_latency_seconds_count 1.0" in text
    finally:
        if worker is not None:
            worker.close()
        pool.stop()


def test_sigterm_exits_cleanly_with_workers_and_watchers(pool: PoolProcess) -> None:
    admin = pool.admin()
    worker = FakeWorker(pool.address, pool.join_token()).connect()
    try:
        task = submit(admin)
        worker.next_assignment()
        watch = admin._pool.WatchTask(
            pb.WatchRequest(task_id=task.id, follow=True),
            metadata=(("authorization", f"Bearer {admin.token}"),),
        )
        next(iter(watch))
        started = time.monotonic()
        assert pool.stop() == 0
        print(f"stopped in {time.monotonic() - started:.1f} s")
        assert "stopped" in pool.log()
        assert not (pool.data_dir / "pool.json").exists()
    finally:
        worker.close()


def test_kill_leaves_pool_file(pool: PoolProcess) -> None:
    pool.kill()
    info = json.loads((pool.data_dir / "pool.json").read_text())
    assert info["address"] == pool.address and info["pid"] == pool.pid and info["metrics"] is None


def test_settings_layers(tmp_path: Path) -> None:
    config = tmp_path / "pool.toml"
    config.write_text(
        '[pool]\nheartbeat-timeout = "30s"\nmax_bundle_size = "1G"\nlisten = "127.0.0.1:6000"\n'
    )
    settings = load_settings(
        config,
        {"listen": "127.0.0.1:7000"},
        environ={"HIVEMIND_POOL_HEARTBEAT_TIMEOUT": "45", "HIVEMIND_POOL_RETENTION": "2d"},
    )
    assert settings.heartbeat_timeout == 45  # env beats the file
    assert settings.listen == "127.0.0.1:7000"  # flags beat everything
    assert settings.max_bundle_size == 1024**3 and settings.retention == 2 * 86400
    config.write_text("[pool]\nheartbeat_timout = 3\n")
    with pytest.raises(InvalidInput, match="unknown setting"):
        load_settings(config, environ={})
    with pytest.raises(InvalidInput, match="longer than the heartbeat interval"):
        load_settings(None, {"heartbeat_interval": 5, "heartbeat_timeout": 2}, environ={})


def test_admin_cli_local_and_remote(pool: PoolProcess) -> None:
    data = ["--data-dir", str(pool.data_dir)]
    assert (
        cli("user", "add", "root", "--admin", "--password-stdin", *data, stdin="root-password\n").returncode
        == 0
    )
    again = cli("user", "add", "root", "--password-stdin", *data, stdin="root-password\n")
    assert again.returncode == 1 and "already exists" in again.stderr
    short = cli("user", "add", "tiny", "--password-stdin", *data, stdin="abc\n")
    assert short.returncode == 1 and "too short" in short.stderr
    assert cli("user", "add", "eve", "--password-stdin", *data, stdin="eve-password\n").returncode == 0
    users = json.loads(cli("user", "list", "--json", *data).stdout)
    assert {(u["name"], u["admin"]) for u in users} == {("root", True), ("eve", False)}

    token = PoolClient(pool.address).login("root", "root-password").token
    remote = ["--pool", pool.address, "--token", token]
    assert cli("user", "disable", "eve", *remote).returncode == 0
    assert json.loads(cli("user", "list", "--json", *data).stdout)[0]["disabled"]

    created = cli("join-token", "create", "--expires", "1h", *remote)
    assert created.returncode == 0 and created.stdout.strip().startswith("hmj_")
    listed = json.loads(cli("join-token", "list", "--json", *data).stdout)
    assert len(listed) == 1 and not listed[0]["revoked"]
    assert cli("join-token", "revoke", listed[0]["id"], *data).returncode == 0
    assert json.loads(cli("join-token", "list", "--json", *remote).stdout)[0]["revoked"]
    assert cli("join-token", "create", "--expires", "soon", *data).returncode == 1

    worker = FakeWorker(pool.address, pool.join_token(), name="status-worker").connect()
    try:
        status = cli("status", *remote)
        assert status.returncode == 0 and "status-worker" in status.stdout and "1 online" in status.stdout
        assert "status-worker" in cli("status", *data).stdout
    finally:
        worker.close()
    denied = cli("user", "list", "--pool", pool.address, "--token", "hmu_bogus")
    assert denied.returncode == 1 and "error" in denied.stderr
    missing = cli("user", "list", "--data-dir", str(pool.data_dir.parent / "nowhere"))
    assert missing.returncode == 1 and "no pool data" in missing.stderr


def test_every_command_has_help() -> None:
    for args in (
        ["--help"],
        ["serve", "--help"],
        ["user", "add", "--help"],
        ["user", "list", "--help"],
        ["user", "disable", "--help"],
        ["join-token", "create", "--help"],
        ["join-token", "list", "--help"],
        ["join-token", "revoke", "--help"],
        ["tls", "init", "--help"],
        ["status", "--help"],
    ):
        result = cli(*args)
        assert result.returncode == 0 and "usage:" in result.stdout, args
