"""The worker daemon: join, hold the Connect stream, run assignments, obey cancel orders, drain.

Threads and why:
- the main thread holds the Connect stream, reconnecting with backoff, and reacts to the pool's
  messages (each reaction only starts or signals an attempt, so it never blocks);
- a heartbeat thread puts a Heartbeat on the stream's outbox on its own schedule: gRPC sends it from
  its own thread, so no task, image build or download can delay it; it also notices a pool that went
  silent and breaks the stream so the main thread reconnects;
- one thread per attempt (attempt.py), plus that attempt's event sender;
- a lease thread: when the pool has not answered for the lease (lease.py), it stops the running
  attempts, which hand their tasks back. The runner in each sandbox watches the same lease on its
  own, so tasks stop in time even when this whole process is frozen or killed.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from hivemind_nodepool.client import PoolClient, WorkerStream
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.commandline import EXIT_ERROR, EXIT_OK
from hivemind_nodepool.protocol.errors import (
    Cancelled,
    HiveMindError,
    InvalidInput,
    PoolUnavailable,
    Unauthenticated,
)
from hivemind_nodepool.protocol.private import private_umask

from . import facts as machine
from . import identity as identity_file
from .attempt import Attempt, AttemptConfig
from .bundles import BundleCache
from .disk import MOUNT, can_mount, default_task_disk, human, release_leftovers
from .errors import WorkerError
from .executors.base import Executor
from .lease import Lease
from .settings import SCHEMA, WorkerSettings

log = logging.getLogger(__name__)

MAX_BACKOFF = 10.0
PASS_TOKEN = SCHEMA.settings["join_token"].env  # the variable that keeps a join token out of `ps`
LEASE_BACKOFF = 1.0  # the longest wait between reconnections while tasks run
LEASE_CHECK = 0.25  # seconds between the lease thread's looks


class Daemon:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.state_dir = Path(settings.state_dir).expanduser()
        self.attempts: dict[tuple[str, int], Attempt] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()  # leave the connection loop
        self._draining = threading.Event()
        self._drain_started = 0.0
        self._hurry = threading.Event()  # a second signal: hand everything back now
        self._call: WorkerStream | None = None
        self._outbox: queue.Queue[pb.WorkerMessage | None] | None = None
        self._last_heard = time.monotonic()
        self.lease = Lease()
        self._hello_sent = time.monotonic()
        self.heartbeat_interval = settings.heartbeat_interval
        self.heartbeat_timeout = max(15.0, settings.heartbeat_interval * 5)
        self.worker_id = ""
        self.client: PoolClient | None = None
        self.executor: Executor | None = None
        self.bundles: BundleCache | None = None
        self.proto_facts: pb.MachineFacts | None = None
        self.config = AttemptConfig(
            max_output_bytes=settings.max_output_bytes,
            max_result_bytes=settings.max_result_bytes,
            default_timeout=settings.default_timeout,
            default_memory=settings.default_memory,
            keep_folders=settings.keep_attempts,
        )

    # -- setting up -----------------------------------------------------------------------------

    def _make_executor(self) -> Executor:
        from .env_admin import open_cache

        s = self.settings
        if not s.name:
            s.name = socket.gethostname()  # what "environment cached on <worker>" names
        if s.executor == "local":
            from .env_local import LocalEnvironments
            from .executors.local import LocalExecutor

            local = open_cache(s)
            assert isinstance(local, LocalEnvironments)
            return LocalExecutor(self.state_dir, local)
        from .env_docker import DockerEnvironments
        from .executors.docker import DockerExecutor
        from .image import docker_client, image_id, runtime_images

        client = docker_client()
        image_id(client, s.image)  # fails early, saying how to build it
        runtimes = runtime_images(client, s.image, self.state_dir)
        log.info("runtime images: %s", ", ".join(f"Python {v}: {t}" for v, t in runtimes.items()))
        environments = open_cache(s, client, runtimes)
        assert isinstance(environments, DockerEnvironments)
        return DockerExecutor(
            client,
            environments,
            worker_id=self.worker_id,
            pids_limit=s.pids_limit,
            tmpfs_size=s.tmpfs_size,
            default_memory=s.default_memory,
            task_network=s.task_network,
        )

    def _facts(self) -> pb.MachineFacts:
        s = self.settings
        found = machine.detect(self.state_dir, with_docker=s.executor == "docker")
        cap = machine.capacity(found, s.max_cpus, s.max_memory, s.max_gpus)
        cap.disk_bytes = self.config.task_disk  # per task: the pool places no bigger request here
        if s.executor == "docker" and not found.nvidia_runtime:
            cap.gpus = 0  # containers cannot be given GPUs without the NVIDIA runtime
        facts = machine.to_proto(found, s.executor, s.labels, cap)
        if self.executor is not None:
            facts.python_versions.extend(self.executor.python_versions())
            facts.images.extend(self.executor.images())
        return facts

    def _set_task_disk(self) -> None:
        s = self.settings
        self.config.task_disk = s.task_disk or default_task_disk(self.state_dir)
        self.config.disk_mode = s.task_disk_enforce
        why = can_mount()
        if s.task_disk_enforce == MOUNT and why:
            raise WorkerError(f"--task-disk-enforce mount: cannot mount task disks here ({why})")
        how = "monitored" if s.task_disk_enforce == "monitor" or why else "a size-limited filesystem"
        log.info("each task may use %s of disk (%s)", human(self.config.task_disk), how)
        if s.task_disk_enforce == "auto" and why:
            log.info("task disks are measured every second, not mounted: %s", why)

    def _join(self) -> None:
        """Load the identity, or register with the join token."""
        s = self.settings
        assert self.client is not None and self.proto_facts is not None
        saved = identity_file.load(self.state_dir, s.pool)
        if saved is not None:
            self.worker_id, self.client.token = saved.worker_id, saved.credential
            log.info("rejoining %s as worker %s", s.pool, saved.worker_id)
            return
        if not s.join_token:
            raise Unauthenticated(
                f"this worker has not joined {s.pool} yet: give it a join token with "
                f"--join-token-file FILE (or - for standard input) or {PASS_TOKEN} "
                "(an admin creates one with `hivemind-nodepool join-token create`)"
            )
        # This state dir's identity for another address: the same pool may only have moved (a new
        # port); asking to be that worker again keeps one worker per state dir.
        previous = identity_file.load_any(self.state_dir)
        earlier = (previous.worker_id, previous.credential) if previous is not None else None
        try:
            answer = self._retrying(
                lambda: self.client.register_worker(
                    s.join_token, s.name or socket.gethostname(), self.proto_facts, earlier
                )
            )
        except Unauthenticated as exc:
            raise Unauthenticated(
                f"the pool refused the join token ({exc}): ask the admin for a new "
                f"one (`hivemind-nodepool join-token create`) and pass it with --join-token-file "
                f"or {PASS_TOKEN}"
            ) from None
        self.worker_id = answer.worker_id
        saved = identity_file.Identity(answer.worker_id, answer.credential, s.pool)
        identity_file.save(self.state_dir, saved)
        again = earlier is not None and earlier[0] == answer.worker_id
        log.info("joined %s as worker %s%s", s.pool, answer.worker_id, " again" if again else "")

    def _retrying(self, call: Any) -> Any:
        backoff = 0.5
        while True:
            try:
                return call()
            except PoolUnavailable as exc:
                if self._stop.is_set():
                    raise
                log.warning("%s; retrying in %.0fs", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    # -- running --------------------------------------------------------------------------------

    def run(self) -> int:
        s = self.settings
        if not s.pool:
            raise InvalidInput("no pool address: pass --pool HOST:PORT (or set pool in the config file)")
        # Task folders and results are their user's alone: nothing the worker writes is for other
        # accounts. A container's user still reaches its own bind-mounted folders (prepare_dirs).
        private_umask()
        identity_file.prepare_state_dir(self.state_dir)
        self._set_task_disk()
        self._install_signals()
        self.proto_facts = self._facts()
        self.client = PoolClient(s.pool, ca_file=s.ca, insecure=s.insecure)
        try:
            self._join()
            self.executor = self._make_executor()
            self.proto_facts = self._facts()  # now with the executor's Pythons and images
            if hasattr(self.executor, "worker_id"):
                self.executor.worker_id = self.worker_id
            reaped = self.executor.reap_leftovers(keep=set())
            if reaped:
                log.warning("stopped %d task sandboxes left from an earlier run", len(reaped))
            release_leftovers(self.state_dir / "attempts")  # a killed run's task disks
            shutil.rmtree(self.state_dir / "attempts", ignore_errors=True)
            self.bundles = BundleCache(self.state_dir / "bundles", s.bundle_cache_size)
            threading.Thread(target=self._watch_lease, name="lease", daemon=True).start()
            return self._connection_loop()
        except Unauthenticated as exc:
            log.error("%s", exc)
            return EXIT_ERROR
        finally:
            self._hand_back_attempts("the worker stopped", wait=30)
            if self.executor is not None:
                self.executor.close()
            self.client.close()

    def _connection_loop(self) -> int:
        backoff = 0.5
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self._session()
            except Unauthenticated as exc:
                if not self.settings.join_token:
                    raise Unauthenticated(
                        f"the pool refused this worker's credential ({exc}); join again with a join "
                        f"token (--join-token-file or {PASS_TOKEN})"
                    ) from None
                log.warning("the pool refused this worker's credential (%s); joining again", exc)
                identity_file.forget(self.state_dir)
                self._join()
                if hasattr(self.executor, "worker_id"):
                    self.executor.worker_id = self.worker_id  # type: ignore[union-attr]
                continue
            except HiveMindError as exc:
                if not self._stop.is_set():
                    log.warning("connection to the pool lost: %s", exc)
            if self._stop.is_set():
                break
            if time.monotonic() - began > 30:
                backoff = 0.5
            # While tasks run, try often: each reconnection renews the lease they depend on.
            cap = LEASE_BACKOFF if self.lease.bound and self._running() else MAX_BACKOFF
            backoff = min(backoff, cap)
            log.info("reconnecting in %.1fs", backoff)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, cap)
        return EXIT_OK

    def _running(self) -> list[pb.RunningAttempt]:
        with self._lock:
            return [
                pb.RunningAttempt(task_id=t, attempt=a)
                for (t, a), run in self.attempts.items()
                if not run.done.is_set()
            ]

    def _session(self) -> None:
        """One Connect stream, from Hello to its end."""
        assert self.client is not None and self.proto_facts is not None
        outbox: queue.Queue[pb.WorkerMessage | None] = queue.Queue()
        self._hello_sent = time.monotonic()  # the Welcome extends the lease from here
        outbox.put(pb.WorkerMessage(hello=pb.Hello(facts=self.proto_facts, running=self._running())))

        def messages() -> Iterator[pb.WorkerMessage]:
            while True:
                message = outbox.get()
                if message is None:
                    return
                yield message

        call = self.client.connect(messages())
        self._call, self._outbox = call, outbox
        self._last_heard = time.monotonic()
        ended = threading.Event()
        beats = threading.Thread(
            target=self._heartbeats, args=(outbox, call, ended), name="heartbeats", daemon=True
        )
        beats.start()
        try:
            for message in call:
                self._last_heard = time.monotonic()
                self._handle(message)
        except Cancelled:
            if self._stop.is_set():
                return
            raise
        finally:
            ended.set()
            outbox.put(None)
            self._call = self._outbox = None
        if not self._stop.is_set():
            raise PoolUnavailable("the pool closed the connection")

    def _heartbeats(
        self, outbox: queue.Queue[pb.WorkerMessage | None], call: WorkerStream, ended: threading.Event
    ) -> None:
        while not ended.wait(self.heartbeat_interval):
            load = os.getloadavg()[0] / max(os.cpu_count() or 1, 1)
            outbox.put(
                pb.WorkerMessage(
                    heartbeat=pb.Heartbeat(
                        running=self._running(),
                        load=load,
                        draining=self._draining.is_set(),
                        seq=self.lease.stamp(),
                        env_cache=self._env_stats(),
                    )
                )
            )
            if time.monotonic() - self._last_heard > self.heartbeat_timeout + self.heartbeat_interval:
                log.warning(
                    "the pool has been silent for %.0fs; reconnecting", time.monotonic() - self._last_heard
                )
                call.cancel()
                return

    def _env_stats(self) -> pb.EnvironmentCacheStats | None:
        executor = self.executor
        if executor is None:
            return None
        try:
            return executor.environments.stats()
        except Exception as exc:  # never worth a missed heartbeat
            log.debug("environment stats: %s", exc)
            return None

    def _handle(self, message: pb.PoolMessage) -> None:
        kind = message.WhichOneof("body")
        if kind == "welcome":
            welcome = message.welcome
            if welcome.heartbeat_interval_seconds > 0:
                self.heartbeat_interval = min(
                    self.settings.heartbeat_interval, welcome.heartbeat_interval_seconds
                )
            if welcome.heartbeat_timeout_seconds > 0:
                self.heartbeat_timeout = welcome.heartbeat_timeout_seconds
            self.config.pool_max_result_bytes = max(welcome.max_result_bytes, 0)
            self.lease.welcome(self._hello_sent, welcome.lease_seconds)
            log.info(
                "connected to %s as %s (heartbeat every %.1fs, lease %.1fs)",
                self.settings.pool,
                welcome.worker_id or self.worker_id,
                self.heartbeat_interval,
                welcome.lease_seconds,
            )
        elif kind == "ack":
            if message.ack.seq:
                self.lease.answered(message.ack.seq)
        elif kind == "assignment":
            self._assign(message.assignment)
        elif kind == "cancel":
            order = message.cancel
            with self._lock:
                run = self.attempts.get((order.task_id, order.attempt))
            if run is not None:
                log.info(
                    "%s: %s %s", run.name, "handing back" if order.requeue else "cancelling", order.reason
                )
                run.cancel(order.reason, requeue=order.requeue)
        elif kind == "drain":
            log.info("the admin asked this worker to drain")
            self.begin_drain(exit_after=False)

    def _assign(self, assignment: pb.Assignment) -> None:
        assert self.client and self.executor and self.bundles
        key = (assignment.task_id, assignment.attempt)
        with self._lock:
            if key in self.attempts:
                return  # sent again after a reconnect: already running
            run = Attempt(
                assignment,
                self.client,
                self.executor,
                bundles=self.bundles,
                attempts_root=self.state_dir / "attempts",
                config=self.config,
                on_done=self._finished,
                lease=self.lease,
            )
            self.attempts[key] = run
        if self._draining.is_set():
            run.cancel("the worker is draining", requeue=True)
        log.info(
            "assigned %s attempt %d (%s)",
            assignment.task_id,
            assignment.attempt,
            assignment.manifest.name or assignment.manifest.entry_notebook,
        )
        run.start()

    def _watch_lease(self) -> None:
        """Stop the attempts that began before the lease lapsed (they hand their tasks back)."""
        told = False
        while not self._stop.wait(LEASE_CHECK):
            now = time.monotonic()
            if not self.lease.lapsed(now):
                told = False
                continue
            with self._lock:
                runs = [r for r in self.attempts.values() if r.started_at < now and not r.done.is_set()]
            if runs and not told:
                log.warning(
                    "no answer from the pool for the lease (%.1fs): stopping %d task(s), which go back "
                    "to the pool",
                    self.lease.duration,
                    len(runs),
                )
                told = True
            reason = (
                f"this worker lost its lease: the pool had not answered it for "
                f"{self.lease.duration:.0f}s, so the task was stopped and handed back"
            )
            for run in runs:
                run.lease_lapsed(reason)

    def _finished(self, run: Attempt) -> None:
        with self._lock:
            self.attempts.pop(run.key, None)

    # -- stopping -------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._draining.is_set():
            log.warning("second signal: handing running tasks back now")
            self._hurry.set()
            return
        log.info("signal %d: draining (running tasks get %.0fs to finish)", signum, self.settings.drain_grace)
        self.begin_drain(exit_after=True)

    def begin_drain(self, exit_after: bool) -> None:
        """No new tasks; running ones get the grace period, then go back to the pool."""
        if self._draining.is_set():
            return
        self._draining.set()
        self._drain_started = time.monotonic()
        outbox = self._outbox
        if outbox is not None:  # say so at once rather than at the next heartbeat
            outbox.put(
                pb.WorkerMessage(
                    heartbeat=pb.Heartbeat(running=self._running(), draining=True, seq=self.lease.stamp())
                )
            )
        threading.Thread(target=self._drain, args=(exit_after,), name="drain", daemon=True).start()

    def _drain(self, exit_after: bool) -> None:
        deadline = self._drain_started + self.settings.drain_grace
        while time.monotonic() < deadline and not self._hurry.is_set():
            with self._lock:
                if not self.attempts:
                    break
            self._hurry.wait(0.2)
        self._hand_back_attempts("the worker is shutting down; the task goes back to the pool", wait=60)
        if exit_after:
            self.stop()

    def stop(self) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()

    def _hand_back_attempts(self, reason: str, wait: float) -> None:
        """Stop every running attempt and give its task back to the pool (requeued); wait up to
        `wait` seconds for each to end."""
        with self._lock:
            left = list(self.attempts.values())
        for run in left:
            run.cancel(reason, requeue=True)
        for run in left:
            run.join(timeout=wait)


def run_daemon(settings: WorkerSettings) -> int:
    """Entry for the CLI: run until drained; returns the exit status."""
    try:
        return Daemon(settings).run()
    except WorkerError as exc:
        log.error("%s", exc)
        return EXIT_ERROR
