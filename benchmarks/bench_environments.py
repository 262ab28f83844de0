"""Benchmarks of task environments, side by side in one run (timings here are noisy: read the ratios).

1. Cold build: numpy + pandas + matplotlib (the kernel's versions where it has them, the rest and the
   closure resolved once beforehand) built by the worker's Docker builder (uv) from an empty package
   cache, against a plain `pip install` of the same pins into a fresh venv (no pip cache).
   Target: <= 0.2x.
2. Incremental: the same pins plus one small package, with the package cache warm, against the cold
   build. Target: <= 0.15x.
3. Warm: a cell whose environment is cached, submitted to a real pool and Docker worker and waited
   for, against the same cell needing no packages (mode none), so what differs is the
   environment and not the cell's imports. Target: <= 1.2x.

The cold build prints where its time went: the builder's steps as it timed them (container create,
container start and uv, docker commit, image inspect) and, inside the run, uv's own figures (resolve,
download and unpack into the cache, install into the environment).

This benchmark uses the machine's package index (tests never do).

    .venv/bin/python benchmarks/bench_environments.py [--repeat 5] [--cold-only]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from harness.pool import PoolProcess  # noqa: E402
from harness.worker import WorkerProcess  # noqa: E402
from worker.helpers import bundle, notebook, submit, user  # noqa: E402

from hivemind_nodepool.proto import nodepool_pb2 as pb  # noqa: E402
from hivemind_nodepool.protocol.environment import LOCK_PATH, check_requirements  # noqa: E402
from hivemind_worker.env_docker import DockerEnvironments  # noqa: E402
from hivemind_worker.environment_request import LOCK, EnvironmentRequest  # noqa: E402
from hivemind_worker.environments import QuietReport  # noqa: E402
from hivemind_worker.image import docker_client, image_python, runtime_images, runtime_tag  # noqa: E402
from hivemind_worker.uv import IndexSettings, uv_binary  # noqa: E402

PACKAGES = ("numpy", "pandas", "matplotlib")
EXTRA = "tomli-w==1.0.0"  # the incremental build's one more small package


def kernel_pins() -> list[str]:
    pins = []
    for name in PACKAGES:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(name)  # resolved by the index below
    return pins


def resolve(pins: list[str], python: str, work: Path) -> str:
    """The closure of the pins for the runtime's Python, pinned (uv pip compile, its own cache)."""
    source = work / "wanted.in"
    source.write_text("\n".join(pins) + "\n")
    done = subprocess.run(
        [
            str(uv_binary()),
            "pip",
            "compile",
            "--quiet",
            "--no-header",
            "--no-annotate",
            "--python-version",
            python,
            "--cache-dir",
            str(work / "compile-cache"),
            str(source),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def request(text: str) -> EnvironmentRequest:
    return EnvironmentRequest(LOCK, text=text.encode(), requirements=tuple(check_requirements(text)))


def builder_seconds(envs: DockerEnvironments, text: str) -> float:
    began = time.perf_counter()
    with envs.use(request(text), QuietReport()):
        pass
    return time.perf_counter() - began


def breakdown(envs: DockerEnvironments) -> str:
    """Where the last build's time went: the builder's steps, and uv's own figures inside the run."""
    clock = envs.last_build
    if clock is None:
        return ""
    return "".join(f"      {step:<38} {seconds:7.2f}\n" for step, seconds in clock.seconds.items())


def pip_seconds(text: str, work: Path) -> float:
    venv = work / "pip-venv"
    shutil.rmtree(venv, ignore_errors=True)
    lock = work / "pip-lock.txt"
    lock.write_text(text)
    began = time.perf_counter()
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "--quiet",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "-r",
            str(lock),
        ],
        check=True,
    )
    return time.perf_counter() - began


def round_trip(client, data: bytes, environment: pb.Environment) -> float:
    began = time.perf_counter()
    task = submit(client, data, memory=1024**3, environment=environment)
    final = client.wait(task.id, timeout=900)
    if final.state != pb.SUCCEEDED:
        raise RuntimeError(f"task {task.id} ended {pb.TaskState.Name(final.state)}: {final.error}")
    return time.perf_counter() - began


def warm_cells(work: Path, lock_text: str, repeat: int) -> tuple[float, float]:
    """(a cell with a cached environment, a cell with none): medians of round trips."""
    pool = PoolProcess(work / "pool").start()
    worker = None
    try:
        extra = ["--uv-cache", str(work / "uv-cache")]
        worker = WorkerProcess(pool, executor="docker", name="bench-env", extra_args=extra).start()
        client = user(pool)
        # The same code in both: what differs is the environment, not the time numpy takes to import.
        code = "import sys\nprint(sys.version)"
        with_env = bundle(notebook(code), {LOCK_PATH: lock_text.encode()})
        bare = bundle(notebook(code))
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        locked = pb.Environment(mode="auto", python_version=version)
        nothing = pb.Environment(mode="none", python_version=version)
        round_trip(client, with_env, locked)  # builds it (or finds it): later ones are cached
        round_trip(client, bare, nothing)
        cached, plain = [], []
        for _ in range(repeat):  # interleaved, so drift hits both alike
            cached.append(round_trip(client, with_env, locked))
            plain.append(round_trip(client, bare, nothing))
        return statistics.median(cached), statistics.median(plain)
    finally:
        if worker is not None:
            worker.stop()
        pool.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cold-only", action="store_true", help="only the cold build against pip")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hivemind-bench-env-"))
    client = docker_client()
    try:
        python = image_python(client, runtime_tag())
        base = f"{resolve(kernel_pins(), python, work)}# bench {work.name}\n"
        plus = f"{resolve([*kernel_pins(), EXTRA], python, work)}# bench {work.name}\n"
        index = IndexSettings(cache_dir=work / "uv-cache")
        envs = DockerEnvironments(
            client, runtime_images(client, runtime_tag(), work), work / "envs", 100 * 1024**3, index
        )
        cold = builder_seconds(envs, base)
        cold_steps = breakdown(envs)
        pip = pip_seconds(base, work)
        packages = len(check_requirements(base))
        out = io.StringIO()
        out.write(f"environments: {', '.join(kernel_pins())} ({packages} pinned packages), seconds\n")
        out.write(f"  cold: worker's builder (uv), empty cache   {cold:7.2f}\n{cold_steps}")
        out.write(f"  cold: pip install into a fresh venv        {pip:7.2f}\n")
        out.write(f"  cold builder / pip                         {cold / pip:7.2f}x  (target <= 0.2x)\n")
        if args.cold_only:
            print(out.getvalue(), end="")
            envs.close()
            envs.prune()
            return 0
        incremental = builder_seconds(envs, plus)
        cached, plain = warm_cells(work, base, args.repeat)
        out.write(f"  incremental (+{EXTRA}), warm cache {incremental:7.2f}\n")
        out.write(
            f"  incremental / cold                         {incremental / cold:7.2f}x  (target <= 0.15x)\n"
        )
        out.write(f"  warm cell, cached environment (median)     {cached:7.2f}\n")
        out.write(f"  cell with no packages (median)             {plain:7.2f}\n")
        out.write(f"  warm / no packages                         {cached / plain:7.2f}x  (target <= 1.2x)\n")
        print(out.getvalue(), end="")
        envs.close()
        envs.prune()
        return 0
    finally:
        subprocess.run(
            ["docker", "image", "prune", "-f", "--filter", "label=org.hivemind.role=env"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
