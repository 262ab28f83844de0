"""Runs a task in a locked-down Docker container.

The container gets no network (unless the pool allowed it), a read-only root, no capabilities,
no-new-privileges, a pids limit, the task's memory (without swap) and CPU limits, its GPUs where the
engine has the NVIDIA runtime, a non-root user, a capped log, and never the Docker socket. Its only
writable places are the attempt's task, output and /tmp folders, all on the task's size-limited disk
(disk.py), or a tmpfs of --tmpfs-size on /tmp where the admin chose one. The attempt's lease folder
is mounted read-only, so the task cannot extend its own lease.

Containers are created with auto-remove: one that ends while no worker looks after it (the worker
was killed, and the runner stopped the task when the lease lapsed) leaves nothing behind. Its exit
status and whether it ran out of memory therefore come from the engine's events for it, watched
from before it starts, not from inspecting it afterwards.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
from docker.types import DeviceRequest, LogConfig, Mount

from hivemind_nodepool.protocol.phases import CONTAINER

from ..env_docker import DockerEnvironments
from ..errors import NoTaskNetwork
from ..image import RUNNER
from ..lease import LEASE_FILE
from .base import (
    STOP_GRACE,
    EventSink,
    Executor,
    LineParser,
    Outcome,
    RunOutcome,
    RunSpec,
    StderrTail,
    StopCheck,
    Stopper,
    outcome_from_end,
    phase_event,
    write_request,
)

log = logging.getLogger(__name__)

CONTAINER_USER = (1000, 1000)  # the runtime image's non-root user
TASK_DIR = "/task"
OUT_DIR = "/hivemind/out"
RUNNER_PATH = "/hivemind/runner.py"
TMP_DIR = "/tmp"  # noqa: S108 (in the container)
# The engine keeps a copy of what the task prints; the worker reads it from the attach stream, so a
# small capped log is enough, and a print flood cannot fill the engine's disk.
TASK_LOG = LogConfig(type=LogConfig.types.JSON, config={"max-size": "8m", "max-file": "1"})
LEASE_DIR = "/hivemind/lease"
ROLE_LABEL = "org.hivemind.role"
POLL_SECONDS = 0.1
EXIT_WAIT = 30.0  # seconds to wait for the engine's word that an ended container has exited


class ExitWatch:
    """The engine's events about one container, from before it starts: its exit status, and
    whether the kernel's OOM killer struck in it."""

    def __init__(self, client: docker.DockerClient, container_id: str) -> None:
        self.exit_code: int | None = None
        self.oom = False
        self.exited = threading.Event()
        self._stream = client.events(
            decode=True, filters={"container": container_id, "event": ["oom", "die"]}
        )
        self._thread = threading.Thread(target=self._read, name=f"exit-{container_id[:12]}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self._stream:
                action = event.get("Action") or event.get("status")
                if action == "oom":
                    self.oom = True
                elif action == "die":
                    code = (event.get("Actor") or {}).get("Attributes", {}).get("exitCode")
                    self.exit_code = int(code) if code is not None else None
                    return
        except Exception as exc:  # the stream was closed, or the engine went away
            log.debug("events stream ended: %s", exc)
        finally:
            self.exited.set()

    def close(self) -> None:
        try:
            self._stream.close()
        except Exception as exc:
            log.debug("closing the events stream: %s", exc)


def nvidia_runtime_available(client: docker.DockerClient) -> bool:
    try:
        return "nvidia" in (client.info().get("Runtimes") or {})
    except docker.errors.DockerException:
        return False


class DockerExecutor(Executor):
    name = "docker"
    isolated = True
    environments: DockerEnvironments

    def __init__(
        self,
        client: docker.DockerClient,
        environments: DockerEnvironments,
        *,
        worker_id: str = "",
        pids_limit: int = 512,
        tmpfs_size: int = 0,
        default_memory: int = 2 * 1024**3,
        task_network: str = "bridge",
    ) -> None:
        self.client = client
        self.task_network = task_network
        self.worker_id = worker_id
        self.pids_limit = pids_limit
        self.tmpfs_size = tmpfs_size
        self.default_memory = default_memory
        self.gpu_runtime = nvidia_runtime_available(client)
        self.environments = environments

    def images(self) -> list[str]:
        return list(self.environments.allowed_images)

    def check_network(self) -> None:
        """The task network must exist: engines started with --bridge=none have no "bridge", and a
        task must then fail saying so rather than run on some other network."""
        name = self.task_network
        try:
            found = any(net.name == name for net in self.client.networks.list(names=[name]))
        except docker.errors.DockerException as exc:
            raise NoTaskNetwork(f"cannot look up the Docker network {name!r} for this task: {exc}") from None
        if not found:
            raise NoTaskNetwork(
                f"this task may use the network, but the Docker engine on this worker has no network "
                f"for tasks (no Docker network named {name!r}; engines started with --bridge=none "
                "have none). To fix it, the worker's admin creates one, `docker network create "
                "hivemind-tasks`, and starts the worker with --task-network hivemind-tasks (or runs "
                "dockerd with its default bridge). Tasks never fall back to the host's network."
            )

    def prepare_dirs(self, spec: RunSpec) -> None:
        """The container's user must write the task and output folders. Running as root we hand
        them to that user; otherwise the container runs as our own user (see _user)."""
        if os.geteuid() != 0:
            return
        uid, gid = CONTAINER_USER
        for top in (spec.task_dir, spec.out_dir, spec.tmp_dir):
            if top is None:
                continue
            for folder, dirs, files in os.walk(top):
                os.chown(folder, uid, gid, follow_symlinks=False)
                for name in dirs + files:
                    os.chown(os.path.join(folder, name), uid, gid, follow_symlinks=False)

    def _user(self) -> str:
        if os.geteuid() == 0:
            return "{}:{}".format(*CONTAINER_USER)
        return f"{os.geteuid()}:{os.getegid()}"

    def container_options(self, spec: RunSpec) -> dict[str, Any]:
        """The hardening, in one place (tests read it too)."""
        memory = spec.memory_bytes or self.default_memory
        options: dict[str, Any] = {
            "name": spec.name,
            "user": self._user(),
            "working_dir": TASK_DIR,
            # Never None (Docker's default, which is the host's on some engines) nor "host".
            "network_mode": self.task_network if spec.allow_network else "none",
            "read_only": True,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "pids_limit": self.pids_limit,
            "mem_limit": memory,
            "memswap_limit": memory,  # no swap: a memory hog stops at its limit
            "init": True,  # reaps the kernel's zombies
            "ipc_mode": "private",
            "auto_remove": True,  # nothing stays behind a container nobody removes (see above)
            "mounts": [
                Mount(TASK_DIR, str(spec.task_dir), type="bind"),
                Mount(OUT_DIR, str(spec.out_dir), type="bind"),
                Mount(RUNNER_PATH, str(RUNNER), type="bind", read_only=True),
            ],
            "log_config": TASK_LOG,
            "environment": {"HIVEMIND_TASK": "1", "PYTHONUNBUFFERED": "1"},
            "labels": {ROLE_LABEL: "task", "org.hivemind.worker": self.worker_id, **spec.labels},
        }
        if self.tmpfs_size > 0 or spec.tmp_dir is None:
            # In memory, counted in the task's memory rather than its disk.
            size = self.tmpfs_size or 1024**3
            options["tmpfs"] = {TMP_DIR: f"rw,nosuid,nodev,size={size}"}
        else:
            options["mounts"].append(Mount(TMP_DIR, str(spec.tmp_dir), type="bind"))
        if spec.lease_dir is not None:
            options["mounts"].append(Mount(LEASE_DIR, str(spec.lease_dir), type="bind", read_only=True))
        if spec.cpus > 0:
            options["nano_cpus"] = int(spec.cpus * 1e9)
        if spec.gpus > 0 and self.gpu_runtime:
            options["device_requests"] = [DeviceRequest(count=spec.gpus, capabilities=[["gpu"]])]
        return options

    def run(self, spec: RunSpec, on_event: EventSink, stopper: Stopper) -> RunOutcome:
        on_event(phase_event(CONTAINER, sandbox="container"))
        write_request(spec, TASK_DIR, OUT_DIR, f"{LEASE_DIR}/{LEASE_FILE}")
        self.prepare_dirs(spec)
        self._remove(spec.name)  # a leftover of an earlier try of the same attempt
        container = self.client.containers.create(
            spec.environment,
            command=["python3", RUNNER_PATH, f"{OUT_DIR}/request.json"],
            detach=True,
            **self.container_options(spec),
        )
        parser = LineParser(on_event)
        stderr_tail = StderrTail()
        exits: ExitWatch | None = None
        try:
            exits = ExitWatch(self.client, container.id)
            stream = self.client.api.attach(
                container.id, stdout=True, stderr=True, stream=True, logs=True, demux=True
            )
            reader = threading.Thread(
                target=self._read, args=(stream, parser, stderr_tail), name=f"read-{spec.name}", daemon=True
            )
            container.start()
            reader.start()
            check = StopCheck(spec, stopper)
            stop_kind: Outcome | None = None
            while reader.is_alive() and not stop_kind:
                stop_kind = check.wait(POLL_SECONDS)
            if stop_kind:
                self._stop(container, reader)
                return check.outcome(stop_kind)
            reader.join()
            if not exits.exited.wait(EXIT_WAIT):
                log.warning("the engine did not report the end of %s", spec.name)
            oom = exits.oom
            outcome = outcome_from_end(parser.end, exits.exit_code)
            memory = spec.memory_bytes or self.default_memory
            if oom and outcome.status != Outcome.OK:
                outcome.status = Outcome.OUT_OF_MEMORY
                outcome.error = f"out of memory: the task used its whole memory limit ({memory} bytes)"
                outcome.peak_memory_bytes = max(outcome.peak_memory_bytes, memory)
                return outcome
            return stderr_tail.explain(outcome)
        finally:
            if exits is not None:
                exits.close()
            self._remove(spec.name)

    @staticmethod
    def _read(
        stream: Iterator[tuple[bytes | None, bytes | None]], parser: LineParser, stderr_tail: StderrTail
    ) -> None:
        try:
            for out, err in stream:
                if out:
                    parser.feed(out)
                if err:
                    stderr_tail.add(err)
        except Exception as exc:  # the container went away under us
            log.debug("attach stream ended: %s", exc)
        finally:
            parser.close()

    def _stop(self, container: Any, reader: threading.Thread) -> None:
        """SIGTERM (the runner saves the notebook so far), then SIGKILL after STOP_GRACE. The
        container's init passes the signal to the runner only, not to the kernel."""
        self._kill(container, "SIGTERM")
        reader.join(timeout=STOP_GRACE)  # the attach stream ends when the container does
        if reader.is_alive():
            self._kill(container)
            reader.join(timeout=5)

    def _kill(self, container: Any, signal: str = "SIGKILL") -> None:
        try:
            container.kill(signal=signal)
        except docker.errors.APIError as exc:
            log.debug("kill %s (%s): %s", container.name, signal, exc)

    def _remove(self, name: str) -> None:
        try:
            self.client.api.remove_container(name, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # the engine is removing it already (auto-remove)
                self._wait_removed(name)
                return
            log.warning("could not remove container %s: %s", name, exc)

    def _wait_removed(self, name: str) -> None:
        """Return once the engine has removed the container, so none is seen after the task ends."""
        try:
            self.client.api.wait(name, timeout=EXIT_WAIT, condition="removed")
        except docker.errors.NotFound:
            pass
        except Exception as exc:  # an engine that is slow or went away: the daemon's reaping remains
            log.warning("container %s was not removed within %.0fs: %s", name, EXIT_WAIT, exc)

    def running_names(self) -> list[str]:
        containers = self.client.containers.list(
            all=True, filters={"label": [f"{ROLE_LABEL}=task", f"org.hivemind.worker={self.worker_id}"]}
        )
        return [c.name for c in containers]

    def reap_leftovers(self, keep: set[str]) -> list[str]:
        reaped = []
        for name in self.running_names():
            if name not in keep:
                log.warning("removing leftover task container %s", name)
                self._remove(name)
                reaped.append(name)
        return reaped
