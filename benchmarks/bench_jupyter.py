"""Benchmarks of the Jupyter side.

1. Live-output latency: a remote %%hivemind cell prints 100 time-stamped lines; the calling
   kernel's stdout notes when each arrives. Median and 95th percentile of (arrival - print), the
   same clock on both ends (worker and kernel on this machine).
2. Packaging a folder of 1,000 files / 200 MB into a task bundle, against zipping the same files
   with the standard library's zipfile (ZIP_DEFLATED, default level), side by side.

    .venv/bin/python benchmarks/bench_jupyter.py [--executor docker|local] [--lines 100] [--skip-latency]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


class ArrivalRecorder(io.TextIOBase):
    """A stdout that notes, for each 'STAMP <t>' line, how long after <t> it arrived."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        now = time.time()
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            if line.startswith("STAMP "):
                self.latencies.append(now - float(line.split()[1]))
        return len(text)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def bench_latency(executor: str, lines: int, interval: float) -> dict[str, float]:
    from harness.pool import PoolProcess
    from harness.worker import WorkerProcess
    from IPython.core.interactiveshell import InteractiveShell

    from hivemind_jupyter.config import HiveMind
    from hivemind_jupyter.pool import PoolConnector

    work = Path(tempfile.mkdtemp(prefix="hivemind-bench-"))
    home = os.getcwd()
    os.environ["HIVEMIND_CONFIG_DIR"] = str(work / "config")
    pool = PoolProcess(work / "pool").start()
    worker = None
    try:
        pool.add_user("bench", "bench-password-1")
        PoolConnector(HiveMind()).sign_in("bench", "bench-password-1", pool.address)
        worker = WorkerProcess(pool, executor=executor, name=f"bench-{executor}").start()
        shell = InteractiveShell.instance()
        os.chdir(work)
        shell.run_line_magic("load_ext", "hivemind_jupyter")
        cell = (
            f"import time\nfor i in range({lines}):\n"
            f"    print('STAMP', repr(time.time()), flush=True)\n    time.sleep({interval})\n"
        )
        recorder = ArrivalRecorder()
        real_stdout = sys.stdout
        sys.stdout = recorder
        started = time.monotonic()
        try:
            result = shell.run_cell(f"%%hivemind --memory 512M --name latency\n{cell}")
        finally:
            sys.stdout = real_stdout
        if result.error_in_exec is not None:
            raise result.error_in_exec
        total = time.monotonic() - started
    finally:
        if worker is not None:
            worker.stop()
            worker.kill()
        pool.stop()
        os.chdir(home)
        shutil.rmtree(work, ignore_errors=True)
    values = recorder.latencies
    return {
        "lines": len(values),
        "median_ms": statistics.median(values) * 1000,
        "p95_ms": percentile(values, 0.95) * 1000,
        "max_ms": max(values) * 1000,
        "cell_seconds": total,
    }


def make_folder(root: Path, files: int, total_bytes: int) -> None:
    """Half the bytes compressible text (like code and CSV), half random (like images, weights)."""
    size = total_bytes // files
    rng = os.urandom
    rows = "".join(f"{i},{i * 0.37:.4f},sample-{i % 17}\n" for i in range(40_000))
    text = ("time,value,label\n" + rows).encode()
    for index in range(files):
        folder = root / f"part{index // 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        data = (text * (size // len(text) + 1))[:size] if index % 2 else rng(size)
        (folder / f"file{index:04d}.{'csv' if index % 2 else 'bin'}").write_bytes(data)


def bench_packaging(files: int, total_mb: int, repeats: int) -> dict[str, float]:
    from hivemind_jupyter.packaging import pack_cell
    from hivemind_nodepool.client.submission import TaskRequest

    work = Path(tempfile.mkdtemp(prefix="hivemind-pack-"))
    try:
        folder = work / "data"
        make_folder(folder, files, total_mb * 1024 * 1024)
        ours, stdlib = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            _, packed = pack_cell(
                "print('hi')", TaskRequest(), work / "bundle.zip", folder=folder, max_bytes=4 * 1024**3
            )
            ours.append(time.perf_counter() - start)
            packed_size = packed.packed_bytes
            (work / "bundle.zip").unlink()

            start = time.perf_counter()
            with zipfile.ZipFile(work / "plain.zip", "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for path in sorted(folder.rglob("*")):
                    if path.is_file():
                        archive.write(path, path.relative_to(folder).as_posix())
            stdlib.append(time.perf_counter() - start)
            plain_size = (work / "plain.zip").stat().st_size
            (work / "plain.zip").unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "ours_s": statistics.median(ours),
        "stdlib_s": statistics.median(stdlib),
        "ratio": statistics.median(ours) / statistics.median(stdlib),
        "ours_mb": packed_size / 1024**2,
        "stdlib_mb": plain_size / 1024**2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--executor",
        choices=["docker", "local"],
        default=None,
        help="the worker's executor (default: docker when the runtime image exists)",
    )
    parser.add_argument("--lines", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between remote prints")
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()

    if not args.skip_latency:
        executor = args.executor
        if executor is None:
            from hivemind_worker.image import runtime_image_exists

            try:
                executor = "docker" if runtime_image_exists() else "local"
            except Exception:
                executor = "local"
        lat = bench_latency(executor, args.lines, args.interval)
        print(
            f"live output, {executor} worker: {lat['lines']} lines, median {lat['median_ms']:.1f} ms, "
            f"p95 {lat['p95_ms']:.1f} ms, max {lat['max_ms']:.1f} ms "
            f"(target median < 250 ms; whole cell {lat['cell_seconds']:.1f} s)"
        )
    pack = bench_packaging(args.files, args.megabytes, args.repeats)
    print(
        f"packaging {args.files} files / {args.megabytes} MB: HiveMind {pack['ours_s']:.2f} s "
        f"({pack['ours_mb']:.0f} MB), stdlib zipfile {pack['stdlib_s']:.2f} s "
        f"({pack['stdlib_mb']:.0f} MB); "
        f"ratio {pack['ratio']:.2f} (median of {args.repeats})"
    )


if __name__ == "__main__":
    main()
