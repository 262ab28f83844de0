"""The gRPC server: `create_server(settings) -> (server, port)`, health and reflection, explicit
message limits, background loops, and `serve()` with pool.json and a clean SIGTERM shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import json
import logging
import os
import signal
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hivemind_nodepool.pool.app import Pool
from hivemind_nodepool.pool.auth import AuthInterceptor
from hivemind_nodepool.pool.config import PoolSettings
from hivemind_nodepool.pool.gateway import WorkerGatewayService
from hivemind_nodepool.pool.metrics import CallCounter
from hivemind_nodepool.pool.service import NodePoolService
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.proto import nodepool_pb2_grpc as pb_grpc
from hivemind_nodepool.protocol.errors import InvalidInput
from hivemind_nodepool.protocol.files import atomic_write
from hivemind_nodepool.protocol.private import make_private, private_umask
from hivemind_nodepool.protocol.wire import (
    MAX_MESSAGE_BYTES,
    check_plaintext_allowed,
    join_address,
    split_address,
)

log = logging.getLogger(__name__)

POOL_FILE = "pool.json"
SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_concurrent_streams", 1000),
    ("grpc.so_reuseport", 0),  # two pools must never share a port
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


def server_credentials(cert: Path, key: Path) -> grpc.ServerCredentials:
    try:
        chain = cert.read_bytes()
        private = key.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read the TLS certificate or key: {exc}") from None
    return grpc.ssl_server_credentials([(private, chain)])


async def create_server(
    settings: PoolSettings, pool: Pool | None = None
) -> tuple[grpc.aio.Server, int, Pool]:
    """A started server with every service and background loop; port 0 in --listen picks one."""
    pool = pool or Pool(settings)
    host, port = split_address(settings.listen)
    if settings.tls_cert is None:
        check_plaintext_allowed(host, settings.insecure)
    server = grpc.aio.server(
        interceptors=[CallCounter(pool.metrics), AuthInterceptor(pool.auth)], options=SERVER_OPTIONS
    )
    pb_grpc.add_NodePoolServicer_to_server(NodePoolService(pool), server)
    pb_grpc.add_WorkerGatewayServicer_to_server(WorkerGatewayService(pool), server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (
        pb.DESCRIPTOR.services_by_name["NodePool"].full_name,
        pb.DESCRIPTOR.services_by_name["WorkerGateway"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    target = join_address(host, port)
    try:
        if settings.tls_cert is not None and settings.tls_key is not None:
            bound = server.add_secure_port(target, server_credentials(settings.tls_cert, settings.tls_key))
        else:
            bound = server.add_insecure_port(target)
    except RuntimeError:  # gRPC's way of saying the bind failed
        bound = 0
    if not bound:
        raise InvalidInput(
            f"cannot listen on {target}: the port is in use (another pool?) "
            "or the address is not this machine's"
        )
    await server.start()
    for name in ("", *names[:2]):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    pool.health = health_servicer
    pool.tasks = [
        asyncio.create_task(loop(), name=loop.__qualname__)
        for loop in (
            pool.scheduler.run,
            pool.liveness.run,
            pool.collector.run,
            pool.revocations.run,
            pool.disk.run,
        )
    ]
    return server, bound, pool


def write_pool_file(data_dir: Path, address: str, metrics: str | None) -> Path:
    """Atomically: readers see either no file or a whole one."""
    payload = json.dumps({"address": address, "pid": os.getpid(), "metrics": metrics})
    return atomic_write(data_dir / POOL_FILE, payload)  # 0600, in the private data folder


async def stop_loops(tasks: list[asyncio.Task[None]], patience: float = 2.0, rounds: int = 5) -> None:
    """Cancel the background loops and wait for them to end. One that outlives its cancel (a
    swallowed CancelledError: see pool/aio.py) is named in the log and cancelled again, a few
    rounds, rather than awaited for ever."""
    for task in tasks:
        task.cancel()
    pending = {task for task in tasks if not task.done()}
    for _ in range(rounds):
        if not pending:
            break
        _, pending = await asyncio.wait(pending, timeout=patience)
        for task in pending:
            log.error("background loop %s did not stop when cancelled; cancelling again", task.get_name())
            task.cancel()
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("the background loop %s ended with %r", task.get_name(), task.exception())


# The store's writer thread and the blob threads wake from fsync needing the GIL back; with the
# default 5 ms switch interval a busy event loop keeps them waiting that long each time.
GIL_SWITCH_INTERVAL = 0.0005
SHUTDOWN_MARGIN = 10.0  # seconds after the grace period before a hung shutdown is cut short


async def serve(settings: PoolSettings) -> None:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    # Users' bundles and results are theirs alone: nothing the pool writes is for other accounts.
    private_umask()
    make_private(settings.data_dir, "the pool's data folder")
    pool = Pool(settings)
    metrics_address = pool.metrics.serve(settings.metrics_listen) if settings.metrics_listen else None
    server, port, _ = await create_server(settings, pool)
    host, _ = split_address(settings.listen)
    address = join_address(host, port)
    write_pool_file(settings.data_dir, address, metrics_address)
    log.info(
        "listening on %s (%s, data in %s)",
        address,
        "TLS" if settings.tls_cert else "plaintext",
        settings.data_dir,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    # A shutdown that hangs is a bug, but SIGTERM must still end the pool: past the grace period
    # and a margin, print every thread's stack to the log (to find the culprit) and exit.
    faulthandler.dump_traceback_later(settings.shutdown_grace + SHUTDOWN_MARGIN, exit=True)
    pool.stopping = True
    await pool.health.enter_graceful_shutdown()
    for task in pool.tasks:
        task.cancel()
    for entry in pool.fleet.workers.values():  # close worker streams so the server can stop
        if entry.outbox is not None:
            entry.outbox.put_nowait(None)
    pool.notifier.notify_all()
    pool.feed.close("the pool is shutting down; reconnect in a moment")
    await server.stop(settings.shutdown_grace)
    await stop_loops(pool.tasks)
    pool.close()
    with contextlib.suppress(FileNotFoundError):
        current = json.loads((settings.data_dir / POOL_FILE).read_text())
        if current.get("pid") == os.getpid():
            (settings.data_dir / POOL_FILE).unlink()
    log.info("stopped")  # the watchdog stays armed until the process has really exited
