"""Benchmarks of the worker, side by side in one run (timings here are noisy: read the ratios).

1. Round trip of a one-cell notebook submitted to a warm Docker worker and waited for, against a
   bare `docker run` (same hardening flags) of `papermill` on the same notebook, and against plain
   local `papermill`. Target: the round trip within 1.5x of the bare `docker run`.
2. Environment cache: a task whose requirements.txt needs a new environment (miss) against the
   same requirements again (hit).

    .venv/bin/python benchmarks/bench_worker.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import io
import os
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
from worker.helpers import EXTRA_PACKAGE, bundle, notebook, submit, user  # noqa: E402

from hivemind_nodepool.proto import nodepool_pb2 as pb  # noqa: E402
from hivemind_worker.image import runtime_tag  # noqa: E402

ONE_CELL = notebook("1 + 1")


def timed(action, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        action()
        times.append(time.perf_counter() - began)
    return times


def round_trip(client, data: bytes) -> float:
    began = time.perf_counter()
    task = submit(client, data, memory=512 * 1024**2)
    final = client.wait(task.id, timeout=600)
    if final.state != pb.SUCCEEDED:
        raise RuntimeError(f"task {task.id} ended {pb.TaskState.Name(final.state)}: {final.error}")
    return time.perf_counter() - began


def bare_docker(folder: Path) -> None:
    subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--init",
            "--network",
            "none",
            "--read-only",
            "--tmpfs",
            "/tmp:rw,nosuid,nodev,size=1g",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--pids-limit",
            "512",
            "--memory",
            "512m",
            "--user",
            "1000:1000",
            "-v",
            f"{folder}:/task",
            runtime_tag(),
            "papermill",
            "--no-progress-bar",
            "/task/main.ipynb",
            "/tmp/out.ipynb",
        ],
        check=True,
        capture_output=True,
    )


def local_papermill(folder: Path) -> None:
    papermill = Path(sys.executable).parent / "papermill"
    subprocess.run(
        [str(papermill), "--no-progress-bar", str(folder / "main.ipynb"), str(folder / "out.ipynb")],
        check=True,
        capture_output=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hivemind-bench-"))
    folder = work / "task"
    folder.mkdir()
    (folder / "main.ipynb").write_bytes(ONE_CELL)
    os.chmod(folder, 0o777)  # the bare container's user writes nothing there, but reads it
    pool = PoolProcess(work / "pool").start()
    worker = None
    try:
        worker = WorkerProcess(pool, executor="docker", name="bench").start()
        client = user(pool)
        data = bundle(ONE_CELL)
        round_trip(client, data)  # warm: bundle cached, image in the page cache
        bare_docker(folder)
        trips = [round_trip(client, data) for _ in range(args.repeat)]
        bare = timed(lambda: bare_docker(folder), args.repeat)
        local = timed(lambda: local_papermill(folder), args.repeat)

        requirements = f"{EXTRA_PACKAGE}  # bench {os.urandom(4).hex()}\n".encode()
        with_requirements = bundle(
            notebook("import tomli_w\ntomli_w.dumps({'a': 1})"), {"requirements.txt": requirements}
        )
        miss = round_trip(client, with_requirements)
        hits = [round_trip(client, with_requirements) for _ in range(max(2, args.repeat // 2))]

        median = statistics.median
        rt, bd, lp, hit = median(trips), median(bare), median(local), median(hits)
        out = io.StringIO()
        out.write(f"one-cell notebook, median of {args.repeat} (seconds)\n")
        out.write(f"  HiveMind round trip (submit -> SUCCEEDED)  {rt:6.2f}\n")
        out.write(f"  bare docker run ... papermill              {bd:6.2f}\n")
        out.write(f"  local papermill                            {lp:6.2f}\n")
        out.write(f"  round trip / bare docker run               {rt / bd:6.2f}x  (target <= 1.5x)\n")
        out.write(f"  round trip / local papermill               {rt / lp:6.2f}x\n")
        out.write("environment cache (a task with requirements.txt, seconds)\n")
        out.write(f"  miss (builds the environment image)        {miss:6.2f}\n")
        out.write(f"  hit (median of {len(hits)})                        {hit:6.2f}\n")
        out.write(f"  miss / hit                                 {miss / hit:6.2f}x\n")
        print(out.getvalue(), end="")
        return 0
    finally:
        if worker is not None:
            worker.stop()
        pool.stop()
        subprocess.run(
            ["docker", "image", "prune", "-f", "--filter", "label=org.hivemind.role=env"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
