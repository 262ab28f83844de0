"""`hivemind-worker doctor`: checks what a worker needs and says what to fix."""

from __future__ import annotations

import sys
from collections.abc import Callable

from hivemind_nodepool.errors import HiveMindError

from . import facts as machine
from . import identity as identity_file
from .settings import WorkerSettings

OK, WARN, FAIL = "ok", "warn", "FAIL"


def _checks(settings: WorkerSettings, say: Callable[[str, str, str], None]) -> None:
    found = machine.detect(settings.state_dir if settings.state_dir.exists() else None)
    say(OK, "machine", f"{found.cpu_cores} cores, {found.memory_bytes / 1024**3:.1f} GiB memory, "
        f"{found.disk_free_bytes / 1024**3:.1f} GiB free disk")
    if found.gpus:
        names = ", ".join(f"{g.index}: {g.name} ({g.memory_bytes / 1024**3:.0f} GiB)" for g in found.gpus)
        say(OK, "gpus", names)
        if settings.executor == "docker" and not found.nvidia_runtime:
            say(WARN, "gpus", "Docker has no 'nvidia' runtime, so containers cannot use the GPUs: install "
                "the NVIDIA Container Toolkit and run `nvidia-ctk runtime configure --runtime=docker`")
    else:
        say(OK, "gpus", f"none ({found.gpu_error or 'no NVIDIA GPU'})")

    if settings.executor == "local":
        say(WARN, "executor", "local: tasks run WITHOUT isolation, as this user, with its files and network")
    elif not found.docker_ok:
        say(FAIL, "docker", f"the Docker engine does not answer ({found.docker_error}). Start it "
            "(scripts/start-docker.sh here), add this user to the docker group, or use --executor local")
    else:
        say(OK, "docker", "the engine answers")
        from .image import docker_client, image_exists
        client = docker_client()
        if image_exists(client, settings.image):
            say(OK, "image", f"{settings.image} is present")
        else:
            say(FAIL, "image", f"{settings.image} is missing: run `hivemind-worker image build` "
                "(with --bootstrap where no registry is reachable)")

    if not settings.pool:
        say(WARN, "pool", "no pool address given (--pool HOST:PORT): connection not checked")
        return
    from hivemind_nodepool.client import PoolClient
    try:
        with PoolClient(settings.pool, ca_file=settings.ca, insecure=settings.insecure, timeout=5) as client:
            client.wait_ready(timeout=5)
        say(OK, "pool", f"{settings.pool} answers")
    except HiveMindError as exc:
        say(FAIL, "pool", str(exc))
        return
    try:
        saved = identity_file.load(settings.state_dir, settings.pool) if settings.state_dir.exists() else None
    except HiveMindError as exc:
        say(FAIL, "identity", str(exc))
        return
    if saved is not None:
        say(OK, "identity", f"joined as {saved.worker_id} (state dir {settings.state_dir})")
    elif settings.join_token:
        say(OK, "identity", "not joined yet; the join token will be used on `run`")
    else:
        say(FAIL, "identity", "not joined yet and no --join-token: ask the admin for one "
            "(`hivemind-nodepool join-token create`)")


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
