"""The local executor's environments: a venv per lock, made by `uv venv` and filled by
`uv pip install` from the machine's shared package cache, layered on the worker's own packages
through a .pth file (papermill and ipykernel come from there). No isolation: see executors/local.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

from .environment_request import LOCK, EnvironmentRequest
from .environments import BUILD_TIMEOUT, STOP_POLL, Base, BuildReport, EnvironmentCache
from .errors import BuildStopped, EnvironmentBuildError
from .uv import (
    INSTALL_MARK,
    StepParser,
    build_failure,
    install_args,
    no_build_for,
    python_incompatibilities,
    tree_size,
    uv_binary,
)


def _site_packages() -> list[str]:
    """The worker's own package folders, so a task venv sees papermill and ipykernel."""
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    return sorted(p for p in paths if os.path.isdir(p))


def run_streaming(
    command: list[str],
    env: dict[str, str],
    on_line: StepParser,
    stop: threading.Event | None = None,
    timeout: float = BUILD_TIMEOUT,
) -> tuple[int, str]:
    """Run a command, each output line to on_line; (exit code, the whole output). Past the timeout
    it is killed and the code is -9; once stop is set it is killed and BuildStopped raised."""
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
        errors="replace",
    )
    stop = stop if stop is not None else threading.Event()
    ended = threading.Event()
    deadline = time.monotonic() + timeout

    def watch() -> None:  # the output loop blocks on a read: the kill comes from here
        while not ended.is_set():
            if stop.wait(STOP_POLL) or time.monotonic() > deadline:
                process.kill()  # a process that has ended already is not signalled
                return

    watcher = threading.Thread(target=watch, name="env-build-stop", daemon=True)
    watcher.start()
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            on_line.feed(line)
        code = process.wait()
    finally:
        ended.set()
        if process.stdout is not None:
            process.stdout.close()
    if stop.is_set():
        raise BuildStopped("the task was stopped while its environment was being built")
    return code, "".join(lines)


class LocalEnvironments(EnvironmentCache):
    kind = "local"

    def bases(self) -> dict[str, Base]:
        minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
        return {minor: Base(sys.executable, f"{sys.executable}|{sys.version}", minor)}

    def image_ref(self, request: EnvironmentRequest) -> str:
        raise EnvironmentBuildError(
            f"the local executor runs no images (the task asked for {request.image}): "
            "run it on a worker with --executor docker that allow-lists the image"
        )

    def _folder(self, key: str) -> Path:
        return self.root / "venvs" / key[:24]

    def exists(self, key: str) -> str | None:
        python = self._folder(key) / "bin" / "python"
        return str(python) if (self._folder(key) / ".complete").exists() and python.exists() else None

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HIVEMIND_", "UV_", "PIP_"))}
        env.update(self.index.variables())
        return env

    def build(
        self, key: str, request: EnvironmentRequest, base: Base, report: BuildReport, stop: threading.Event
    ) -> tuple[str, int]:
        folder = self._folder(key)
        shutil.rmtree(folder, ignore_errors=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        self.index.cache_dir.mkdir(parents=True, exist_ok=True)
        env = self._environment()
        uv = str(uv_binary())
        try:
            made = subprocess.run(
                [uv, "venv", "--quiet", "--python", base.ref, str(folder)],
                capture_output=True,
                text=True,
                check=False,
                env=env,
                timeout=120,
            )
            if made.returncode != 0:
                raise EnvironmentBuildError(f"creating a venv failed:\n{self.index.redact(made.stderr)}")
            python = folder / "bin" / "python"
            where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
            purelib = subprocess.run(
                [str(python), "-c", where], capture_output=True, text=True, check=True
            ).stdout.strip()
            Path(purelib, "_hivemind_worker_base.pth").write_text("\n".join(_site_packages()) + "\n")
            self._install(folder, request, base, report, env, stop=stop)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        (folder / ".complete").touch()
        return str(python), tree_size(folder)

    def _install(
        self,
        folder: Path,
        request: EnvironmentRequest,
        base: Base,
        report: BuildReport,
        env: dict[str, str],
        *,
        stop: threading.Event,
    ) -> None:
        requirements = folder / "hivemind-requirements.txt"
        requirements.write_bytes(request.text)
        links = [str(self.index.find_links)] if self.index.find_links else []
        if request.wheels:
            links.append(str(request.wheels[0].path.parent))
        args = install_args(
            str(folder / "bin" / "python"),
            str(requirements),
            prefix=None,
            exact=request.kind == LOCK,
            find_links=links,
        )
        uv = str(uv_binary())
        parser = StepParser(report.step)
        code, output = run_streaming([uv, *args, "--dry-run"], env, parser, stop)
        if code == 0:
            parser.feed(INSTALL_MARK)
            code, more = run_streaming([uv, *args], env, parser, stop)
            output += more
        if code != 0:
            raise EnvironmentBuildError(
                build_failure(output, self.index, base.python, request.python_version, code)
            )
        if args.count("--no-deps"):
            self._check_python(folder, request, base, env)

    def _check_python(
        self, folder: Path, request: EnvironmentRequest, base: Base, env: dict[str, str]
    ) -> None:
        """Installed without resolving, a package's Requires-Python went unchecked: check it now."""
        checked = subprocess.run(
            [str(uv_binary()), "pip", "check", "--python", str(folder / "bin" / "python")],
            capture_output=True,
            text=True,
            check=False,
            env=env,
            timeout=120,
        )
        bad = python_incompatibilities(checked.stdout + checked.stderr)
        if bad:
            pins = {r.name: r.pinned_version or "" for r in request.requirements}
            name, spec = bad[0]
            raise EnvironmentBuildError(
                no_build_for(name, pins.get(name, ""), base.python, request.python_version, spec)
            )

    def remove(self, key: str, ref: str) -> None:
        shutil.rmtree(self._folder(key), ignore_errors=True)
