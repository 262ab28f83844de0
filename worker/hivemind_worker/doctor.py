"""`hivemind-worker doctor`: checks what a worker needs and says what to fix."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from hivemind_nodepool.protocol.errors import HiveMindError

from . import facts as machine
from . import identity as identity_file
from .settings import WorkerSettings

OK, WARN, FAIL = "ok", "warn", "FAIL"


def nvidia_pci_devices(root: Path = Path("/sys/bus/pci/devices")) -> list[str]:
    """PCI addresses of NVIDIA display/3D controllers, seen without any driver (vendor 0x10de,
    class 0x03xxxx), so a missing driver can be told from a machine without a GPU."""
    found = []
    try:
        devices = sorted(root.iterdir())
    except OSError:
        return []
    for device in devices:
        try:
            vendor = (device / "vendor").read_text().strip()
            klass = (device / "class").read_text().strip()
        except OSError:
            continue
        if vendor == "0x10de" and klass.startswith("0x03"):
            found.append(device.name)
    return found


def _checks(settings: WorkerSettings, say: Callable[[str, str, str], None]) -> None:
    found = machine.detect(settings.state_dir if settings.state_dir.exists() else None)
    say(
        OK,
        "machine",
        f"{found.cpu_cores} cores, {found.memory_bytes / 1024**3:.1f} GiB memory, "
        f"{found.disk_free_bytes / 1024**3:.1f} GiB free disk",
    )
    if found.gpus:
        names = ", ".join(f"{g.index}: {g.name} ({g.memory_bytes / 1024**3:.0f} GiB)" for g in found.gpus)
        say(OK, "gpus", names)
        if settings.executor == "docker" and not found.nvidia_runtime:
            say(
                WARN,
                "gpus",
                "Docker has no 'nvidia' runtime, so containers cannot use the GPUs: install "
                "the NVIDIA Container Toolkit and run `nvidia-ctk runtime configure --runtime=docker`",
            )
    elif nvidia_pci_devices():
        say(
            WARN,
            "gpus",
            f"this machine has {len(nvidia_pci_devices())} NVIDIA device(s) but the worker "
            f"cannot use them ({found.gpu_error or 'NVML found no GPU'}): install the NVIDIA driver "
            "(nvidia-smi must work), then restart the worker; tasks asking for GPUs go elsewhere until then",
        )
    else:
        say(
            OK,
            "gpus",
            f"none ({found.gpu_error or 'no NVIDIA GPU'}); tasks that ask for GPUs go to other workers",
        )

    if settings.executor == "local":
        say(WARN, "executor", "local: tasks run WITHOUT isolation, as this user, with its files and network")
    elif not found.docker_ok:
        say(
            FAIL,
            "docker",
            f"the Docker engine does not answer ({found.docker_error}). Start it "
            "(scripts/start-docker.sh here), add this user to the docker group, or use --executor local",
        )
    else:
        say(OK, "docker", "the engine answers")
        from .image import docker_client, image_exists

        client = docker_client()
        if image_exists(client, settings.image):
            say(OK, "image", f"{settings.image} is present")
        else:
            say(
                FAIL,
                "image",
                f"{settings.image} is missing: run `hivemind-worker image build` "
                "(with --bootstrap where no registry is reachable)",
            )

    if not settings.pool:
        say(WARN, "pool", "no pool address given (--pool HOST:PORT): connection not checked")
        return
    from hivemind_nodepool.client import PoolClient

    try:
        with PoolClient(settings.pool, ca_file=settings.ca, insecure=settings.insecure, timeout=5) as client:
            client.wait_ready(timeout=5)
        say(OK, "pool", f"{settings.pool} answers")
    except HiveMindError as exc:
        say(
            FAIL,
            "pool",
            f"{settings.pool} does not answer ({exc}). Check the address and port, that "
            "`hivemind-nodepool serve` runs there and a firewall lets this machine reach it; a pool "
            "that serves TLS needs --ca with its CA certificate",
        )
        return
    try:
        saved = identity_file.load(settings.state_dir, settings.pool) if settings.state_dir.exists() else None
    except HiveMindError as exc:
        say(FAIL, "identity", str(exc))
        return
    if saved is not None:
        say(OK, "identity", f"joined as {saved.worker_id} (state dir {settings.state_dir})")
    elif settings.join_token or settings.join_token_file:
        say(
            OK,
            "identity",
            "not joined yet; `run` joins with the join token (only the pool can check "
            "it: if `run` says it was refused, ask the admin for a new one with "
            "`hivemind-nodepool join-token create`)",
        )
    else:
        say(
            FAIL,
            "identity",
            "not joined yet and no join token (--join-token-file, or HIVEMIND_WORKER_JOIN_TOKEN): "
            "ask the admin for one (`hivemind-nodepool join-token create`)",
        )


def run_doctor(settings: WorkerSettings) -> int:
    """Print one line per check; exit 1 when any check failed."""
    failed = False

    def say(level: str, what: str, text: str) -> None:
        nonlocal failed
        failed = failed or level == FAIL
        print(f"[{level:>4}] {what:<9} {text}")

    try:
        _checks(settings, say)
    except HiveMindError as exc:
        say(FAIL, "check", str(exc))
    sys.stdout.flush()
    return 1 if failed else 0
