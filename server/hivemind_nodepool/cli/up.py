"""`hivemind up`: a whole pool on this machine (pool, worker, JupyterLab) for a first try.

Everything lives under one data folder: the pool's database and blobs, the worker's state, and
a local admin user whose password is kept there (0600) so `up` can sign in again next time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

from hivemind_nodepool.client import credentials
from hivemind_nodepool.client.pool_client import PoolClient
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.errors import HiveMindError
from hivemind_nodepool.protocol.files import atomic_write


def _say(message: str) -> None:
    print(f"[hivemind up] {message}", file=sys.stderr, flush=True)


def _tool(name: str) -> str:
    """A console script next to this Python, so `up` works from a venv without activating it."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def docker_ready() -> bool:
    """True when a Docker engine answers and the runtime image is there (the worker's own check)."""
    try:
        checked = subprocess.run(
            [_tool("hivemind-worker"), "image", "check"], capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return checked.returncode == 0


def _wait_for_file(path: Path, process: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise HiveMindError(f"{what} exited with status {process.returncode}; see its log above")
        if time.monotonic() > deadline:
            raise HiveMindError(f"{what} did not start within {timeout:.0f}s")
        time.sleep(0.2)


def _local_admin(data_dir: Path, pool_dir: Path) -> tuple[str, str]:
    """The local admin's name and password, created on first use."""
    secret_file = data_dir / "local-admin.json"
    if secret_file.exists():
        saved = json.loads(secret_file.read_text())
        return saved["name"], saved["password"]
    name = os.environ.get("USER") or "me"
    password = secrets.token_urlsafe(18)
    subprocess.run(
        [
            _tool("hivemind-nodepool"),
            "user",
            "add",
            name,
            "--admin",
            "--password-stdin",
            "--data-dir",
            str(pool_dir),
        ],
        input=password.encode(),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    atomic_write(secret_file, json.dumps({"name": name, "password": password}))
    return name, password


STOP_GRACE = 20.0  # seconds each process gets to stop on SIGTERM before it is killed
# Signals that end `up` the way Ctrl-C does: its processes are stopped before it exits. Without a
# handler Python dies at once on these, and the pool and worker would outlive it.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Stopped(BaseException):
    """`up` was asked to stop by a signal. A BaseException, so that no `except Exception` on the
    way out swallows it; `run_up` turns it into the exit status a shell shows for that signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signum)


@contextlib.contextmanager
def _handling(handler: Callable[[int, FrameType | None], None], signals: tuple[int, ...]) -> Iterator[None]:
    """Install `handler` for `signals` (main thread only, as Python requires) and restore after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in signals}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _stop_all(started: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process in reverse order and wait for it; kill one that outlasts the grace. A
    second Ctrl-C or SIGTERM meanwhile kills the rest at once instead of breaking off the cleanup."""
    hurry = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not hurry.is_set():
            _say("stopping now: killing what is still running")
        hurry.set()

    with _handling(on_signal, (signal.SIGINT, *_STOP_SIGNALS)):
        for process in reversed(started):
            if process.poll() is None and not hurry.is_set():
                process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE
            while process.poll() is None and not hurry.is_set() and time.monotonic() < deadline:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=0.2)
            if process.poll() is None:
                process.kill()
                process.wait()


@contextlib.contextmanager
def _processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Started processes, stopped (SIGTERM, then SIGKILL) in reverse order on the way out, however
    `up` ends: returning, an error, Ctrl-C, SIGTERM or SIGHUP."""
    started: list[subprocess.Popen[bytes]] = []
    with _handling(_raise_stopped, _STOP_SIGNALS):
        try:
            yield started
        finally:
            _stop_all(started)


def _wait_for_worker(
    client: PoolClient, process: subprocess.Popen[bytes], worker_dir: Path, timeout: float = 60
) -> pb.Worker:
    """The worker `up` started, once online (by the id in its state dir: not an older one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise HiveMindError(f"the worker exited with status {process.returncode}; see its log above")
        mine = _worker_id(worker_dir)
        online = [w for w in client.list_workers() if w.state == pb.WORKER_ONLINE and w.id == mine]
        if online:
            return online[0]
        time.sleep(0.3)
    raise HiveMindError(f"the worker did not join within {timeout:.0f}s; see its log above")


def _worker_id(worker_dir: Path) -> str:
    try:
        return str(json.loads((worker_dir / "identity.json").read_text())["worker_id"])
    except (OSError, ValueError, KeyError):
        return ""


def _check_port_free(port: int) -> None:
    """Fail in one line before anything starts when the pool's port is taken."""
    if port == 0:
        return
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise HiveMindError(
                f"port {port} on 127.0.0.1 is already in use ({exc.strerror}): is another pool or "
                "`hivemind up` running? Stop it, or pass --port N (0: any free port)"
            ) from None


def _lab_command(port: int | None) -> list[str]:
    command = [_tool("jupyter"), "lab", "--no-browser"]
    if port is not None:  # that port or none: a taken one fails instead of moving elsewhere
        command += [f"--port={port}", "--ServerApp.port_retries=0"]
    if os.geteuid() == 0:
        # JupyterLab refuses to run as root unless told to; the README sets up as root.
        _say(
            "running as root, so JupyterLab is started with --allow-root (it refuses root "
            "otherwise); on a shared machine run `hivemind up` as a normal user"
        )
        command.append("--allow-root")
    return command


def _wait_for_lab(lab: subprocess.Popen[bytes], timeout: float = 120) -> str:
    """The lab's URL once it answers HTTP; an error when it exits first or never answers."""
    from jupyter_core.paths import jupyter_runtime_dir

    info = Path(jupyter_runtime_dir()) / f"jpserver-{lab.pid}.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.poll() is not None:
            raise HiveMindError(f"JupyterLab exited with status {lab.returncode}; see its log above")
        try:
            server = json.loads(info.read_text())
            with urllib.request.urlopen(f"http://127.0.0.1:{server['port']}/api", timeout=5):
                return str(server["url"]).rstrip("/") + "/lab"
        except (OSError, ValueError, KeyError):
            time.sleep(0.3)
    raise HiveMindError(f"JupyterLab did not answer within {timeout:.0f}s; see its log above")


def _supervise(parts: dict[str, subprocess.Popen[bytes]], done: str | None = None) -> int:
    """Wait until one part ends: 0 when it is `done` ending well (JupyterLab shut down from its
    menu); otherwise an error naming the part, so `up` never exits 0 with a part missing."""
    while True:
        for name, process in parts.items():
            status = process.poll()
            if status is None:
                continue
            if name == done and status == 0:
                return 0
            raise HiveMindError(f"{name} exited with status {status}; see its log above")
        time.sleep(0.5)


def run_notebook(path: Path, output_dir: Path) -> int:
    """Execute a notebook headlessly with a real kernel and print what each cell returned."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(path, as_version=4)
    runner = NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    status = 0
    try:
        runner.execute()
    except CellExecutionError as exc:
        _say(f"a cell failed: {str(exc).splitlines()[0] if str(exc) else exc}")
        status = 1
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        print(f"--- cell {index}: {cell.source.splitlines()[0] if cell.source else ''}")
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                print(output.text, end="")
            elif output.output_type == "error":
                print(f"{output.ename}: {output.evalue}")
            else:
                data = output.get("data", {})
                kinds = ", ".join(sorted(data))
                text = data.get("text/plain", "")
                print(f"[{kinds}] {text}" if text else f"[{kinds}]")
    executed = output_dir / (path.stem + ".executed.ipynb")
    nbformat.write(notebook, executed)
    _say(f"executed notebook saved as {executed}")
    return status


def run_up(args: argparse.Namespace) -> int:
    try:
        return _run_up(args)
    except Stopped as stop:
        _say("stopped")
        return 128 + stop.signum


def _run_up(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).resolve()
    pool_dir, worker_dir = data_dir / "pool", data_dir / "worker"
    pool_dir.mkdir(parents=True, exist_ok=True)
    executor = args.executor
    if executor == "auto":
        executor = "docker" if docker_ready() else "local"
        if executor == "local":
            _say(
                "no Docker engine with the runtime image answers, so the worker uses the LOCAL "
                "executor: tasks run as your user, NOT isolated. (scripts/start-docker.sh and "
                "`hivemind-worker image build --bootstrap` give you the Docker sandbox.)"
            )
    _check_port_free(args.port)
    with _processes() as started:
        (pool_dir / "pool.json").unlink(missing_ok=True)
        _say(f"starting the pool (data in {pool_dir})")
        started.append(
            subprocess.Popen(
                [
                    _tool("hivemind-nodepool"),
                    "serve",
                    "--listen",
                    f"127.0.0.1:{args.port}",
                    "--data-dir",
                    str(pool_dir),
                ]
            )
        )
        _wait_for_file(pool_dir / "pool.json", started[-1], "the pool")
        address = json.loads((pool_dir / "pool.json").read_text())["address"]
        _say(f"the pool listens on {address}")
        name, password = _local_admin(data_dir, pool_dir)
        client = PoolClient(address)
        client.wait_ready(timeout=30)
        login = client.login(name, password)
        credentials.save(
            credentials.Credential(pool=address, user=name, token=login.token, expires_at=login.expires_at)
        )
        _say(f"signed in as {name} (credential in {credentials.config_dir()})")
        # said on every start: after signing out (in the panel) this is how to sign in again
        _say(f"to sign in again as {name}, use the password in {data_dir / 'local-admin.json'}")
        token = client.create_join_token(ttl_seconds=3600).token
        _say(f"starting a worker with the {executor} executor")
        worker = subprocess.Popen(
            [
                _tool("hivemind-worker"),
                "run",
                "--pool",
                address,
                "--join-token-file",
                "-",  # on standard input: a token on the command line is visible to all in `ps`
                "--executor",
                executor,
                "--state-dir",
                str(worker_dir),
            ],
            stdin=subprocess.PIPE,
        )
        started.append(worker)
        assert worker.stdin is not None
        with contextlib.suppress(BrokenPipeError), worker.stdin:  # a worker that died says why itself
            worker.stdin.write(token.encode() + b"\n")
        online = _wait_for_worker(client, worker, worker_dir)
        cap = online.capacity
        _say(
            f"worker {online.name} is online: {cap.cpus:g} CPUs, "
            f"{cap.memory_bytes / 1024**3:.1f} GiB, {cap.gpus} GPUs"
        )
        if args.run:
            return run_notebook(Path(args.run), data_dir)
        parts = {"the pool": started[0], "the worker": started[1]}
        if args.no_lab:
            _say("pool and worker are running; press Ctrl-C to stop")
            with contextlib.suppress(KeyboardInterrupt):
                return _supervise(parts)
            return 0
        _say("starting JupyterLab")
        lab = subprocess.Popen(_lab_command(args.lab_port))
        started.append(lab)
        parts["JupyterLab"] = lab
        url = _wait_for_lab(lab)
        _say(f"JupyterLab is at {url}; open the HiveMind panel in the left sidebar. Ctrl-C stops everything.")
        with contextlib.suppress(KeyboardInterrupt):
            return _supervise(parts, done="JupyterLab")
    return 0
