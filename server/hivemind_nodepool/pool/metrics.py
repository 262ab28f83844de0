"""Prometheus metrics over HTTP (`--metrics-listen`): queue depth, tasks by state, workers up,
scheduling latency, a full disk. A registry of our own, so two pools in one process never share series."""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.wire import split_address

log = logging.getLogger(__name__)

# An interceptor sees every method's messages; the stubs' generic base is not subscriptable at run time.
if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor


class PoolMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.queue_depth = Gauge("hivemind_queue_depth", "Tasks waiting to be placed", registry=self.registry)
        self.tasks = Gauge("hivemind_tasks", "Tasks by state", ["state"], registry=self.registry)
        self.workers_up = Gauge(
            "hivemind_workers_up", "Workers connected and heartbeating", registry=self.registry
        )
        self.latency = Histogram(
            "hivemind_scheduling_latency_seconds",
            "Time from queued to assigned",
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600),
        )
        self.cycle = Histogram(
            "hivemind_scheduler_cycle_seconds",
            "Time one scheduling cycle takes",
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
        )
        self.submitted = Counter("hivemind_tasks_submitted", "Tasks accepted", registry=self.registry)
        self.workers_lost = Counter("hivemind_workers_lost", "Workers declared lost", registry=self.registry)
        self.calls = Counter("hivemind_rpcs", "RPCs started, by method", ["method"], registry=self.registry)
        self.task_feeds = Gauge("hivemind_task_feeds", "Open WatchTasks streams", registry=self.registry)
        self.disk_full = Gauge(
            "hivemind_pool_disk_full",
            "1 while the pool's disk is full: new tasks, results and live events are refused",
            registry=self.registry,
        )
        self.env_cache_bytes = Gauge(
            "hivemind_worker_env_cache_bytes",
            "A worker's task environments and package cache, from its last heartbeat",
            ["worker"],
            registry=self.registry,
        )
        self.env_cache_hit_ratio = Gauge(
            "hivemind_worker_env_cache_hit_ratio",
            "Of a worker's tasks that needed packages, the share whose environment was built already",
            ["worker"],
            registry=self.registry,
        )
        self.env_builds = Gauge(
            "hivemind_worker_env_builds",
            "Environments a worker built since it started, by outcome",
            ["worker", "outcome"],
            registry=self.registry,
        )
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def observe_schedule_latency(self, seconds: float) -> None:
        self.latency.observe(max(seconds, 0.0))

    def set_counts(self, by_state: dict[int, int], workers_up: int) -> None:
        for value in pb.TaskState.values():
            if value:
                self.tasks.labels(pb.TaskState.Name(value)).set(by_state.get(value, 0))
        self.queue_depth.set(by_state.get(pb.QUEUED, 0))
        self.workers_up.set(workers_up)

    def set_env_caches(self, caches: dict[str, pb.EnvironmentCacheStats]) -> None:
        """Each connected worker's environment cache, by worker name; others' series go."""
        for gauge in (self.env_cache_bytes, self.env_cache_hit_ratio, self.env_builds):
            gauge.clear()
        for name, stats in caches.items():
            self.env_cache_bytes.labels(name).set(stats.size_bytes)
            asked = stats.hits + stats.builds + stats.failures
            self.env_cache_hit_ratio.labels(name).set(stats.hits / asked if asked else 0.0)
            self.env_builds.labels(name, "built").set(stats.builds)
            self.env_builds.labels(name, "failed").set(stats.failures)

    def serve(self, listen: str) -> str:
        """Start the HTTP endpoint; returns HOST:PORT actually bound (port 0 picks one)."""
        host, port = split_address(listen, default_port=9464)
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        bound = self._server.server_address[1]
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return f"{host}:{bound}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class CallCounter(_Interceptor):
    """Counts every RPC by method (hivemind_rpcs_total): what clients ask, and how often."""

    def __init__(self, metrics: PoolMetrics) -> None:
        self.calls = metrics.calls

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is not None:  # unknown methods are not counted: no unbounded label values
            self.calls.labels(handler_call_details.method).inc()
        return handler
