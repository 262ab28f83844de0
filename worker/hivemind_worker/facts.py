"""What this machine has: cores, memory, disk, NVIDIA GPUs (through NVML), a Docker engine.

    python -m hivemind_worker.facts      prints the detected facts as JSON

GPUs come from NVML (nvidia-ml-py); without a driver there are none, never an error. The capacity
offered to the pool is what the admin allows (--max-cpus, --max-memory, --max-gpus), never more
than the machine has.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from hivemind_nodepool.proto import nodepool_pb2 as pb

from . import __version__

log = logging.getLogger(__name__)


@dataclass
class GpuInfo:
    index: int
    name: str
    memory_bytes: int
    uuid: str


@dataclass
class Facts:
    hostname: str
    cpu_cores: int
    memory_bytes: int
    disk_free_bytes: int
    gpus: list[GpuInfo] = field(default_factory=list)
    docker_ok: bool = False
    docker_error: str = ""
    nvidia_runtime: bool = False
    gpu_error: str = ""
    platform: str = ""
    version: str = __version__


def detect_gpus() -> tuple[list[GpuInfo], str]:
    """NVIDIA GPUs through NVML: ([], reason) where there is no driver or library."""
    try:
        import pynvml
    except ImportError:
        return [], "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return [], f"no NVIDIA driver: {exc}"
    gpus: list[GpuInfo] = []
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                GpuInfo(
                    index=index,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    memory_bytes=int(memory.total),
                    uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                )
            )
    except Exception as exc:
        return gpus, f"reading GPUs failed: {exc}"
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception as exc:
            log.debug("nvmlShutdown: %s", exc)
    return gpus, ""


def check_docker() -> tuple[bool, bool, str]:
    """(engine answers, has the NVIDIA runtime, why not)."""
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            client.ping()
            runtimes = client.info().get("Runtimes") or {}
            return True, "nvidia" in runtimes, ""
        finally:
            client.close()
    except Exception as exc:
        return False, False, str(exc)


def detect(state_dir: Path | None = None, with_docker: bool = True) -> Facts:
    where = state_dir if state_dir and state_dir.exists() else Path(os.sep)
    gpus, gpu_error = detect_gpus()
    docker_ok, nvidia_runtime, docker_error = check_docker() if with_docker else (False, False, "not checked")
    return Facts(
        hostname=socket.gethostname(),
        cpu_cores=psutil.cpu_count(logical=True) or 1,
        memory_bytes=int(psutil.virtual_memory().total),
        disk_free_bytes=int(psutil.disk_usage(str(where)).free),
        gpus=gpus,
        gpu_error=gpu_error,
        docker_ok=docker_ok,
        nvidia_runtime=nvidia_runtime,
        docker_error=docker_error,
        platform=f"{platform.system()} {platform.release()} {platform.machine()}; "
        f"Python {platform.python_version()}",
    )


def capacity(facts: Facts, max_cpus: float = 0.0, max_memory: int = 0, max_gpus: int = -1) -> pb.Resources:
    """What the pool may use: the machine, reduced by the admin's limits."""
    cpus = float(facts.cpu_cores) if max_cpus <= 0 else min(max_cpus, float(facts.cpu_cores))
    memory = facts.memory_bytes if max_memory <= 0 else min(max_memory, facts.memory_bytes)
    gpus = len(facts.gpus) if max_gpus < 0 else min(max_gpus, len(facts.gpus))
    return pb.Resources(cpus=cpus, memory_bytes=memory, gpus=gpus)


def to_proto(facts: Facts, executor: str, labels: dict[str, str], capacity: pb.Resources) -> pb.MachineFacts:
    return pb.MachineFacts(
        hostname=facts.hostname[:255],
        cpu_cores=facts.cpu_cores,
        memory_bytes=facts.memory_bytes,
        disk_free_bytes=facts.disk_free_bytes,
        gpus=[
            pb.Gpu(index=g.index, name=g.name[:200], memory_bytes=g.memory_bytes, uuid=g.uuid)
            for g in facts.gpus
        ],
        docker_ok=facts.docker_ok,
        executors=[executor],
        labels=labels,
        version=facts.version,
        capacity=capacity,
        platform=facts.platform[:200],
    )


def main() -> int:
    facts = detect()
    json.dump(asdict(facts), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
