"""The `hivemind` command line against a real pool and a real (local-executor) worker."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nbformat
import psutil
import pytest
from harness import processes
from harness.pool import PoolProcess
from harness.worker import WorkerProcess

PASSWORD = "correct horse battery"


def hivemind(
    config: Path, *args: str, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HIVEMIND_CONFIG_DIR": str(config)}
    return subprocess.run(
        [sys.executable, "-m", "hivemind_nodepool.cli.user", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def notebook(folder: Path, source: str, name: str = "job.ipynb") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("n = 3", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(source),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / name
    nbformat.write(nb, path)
    return path


@pytest.fixture
def signed_in(pool: PoolProcess, tmp_path: Path) -> Path:
    pool.add_user("ada", PASSWORD)
    config = tmp_path / "config"
    result = hivemind(
        config, "login", "--pool", pool.address, "--user", "ada", "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert result.returncode == 0, result.stderr
    return config


def test_login_keeps_a_private_credential_and_logout_revokes_it(pool: PoolProcess, signed_in: Path) -> None:
    credential = signed_in / "credentials.json"
    assert stat.S_IMODE(credential.stat().st_mode) == 0o600
    token = json.loads(credential.read_text())["token"]
    assert hivemind(signed_in, "whoami").stdout.startswith("ada")
    assert hivemind(signed_in, "logout").returncode == 0
    assert not credential.exists()
    from hivemind_nodepool.client import PoolClient
    from hivemind_nodepool.protocol.errors import Unauthenticated

    with PoolClient(pool.address, token=token) as client, pytest.raises(Unauthenticated):
        client.whoami()  # the token was revoked on the pool, not only forgotten here


def test_wrong_password_and_no_sign_in_say_what_to_do(pool: PoolProcess, tmp_path: Path) -> None:
    pool.add_user("bob", PASSWORD)
    result = hivemind(
        tmp_path / "c", "login", "--pool", pool.address, "--user", "bob", "--password-stdin", stdin="wrong\n"
    )
    assert result.returncode == 1 and "hivemind:" in result.stderr and "Traceback" not in result.stderr
    result = hivemind(tmp_path / "c", "tasks")
    assert result.returncode == 1 and "hivemind login" in result.stderr


def test_pool_down_is_one_clear_line(tmp_path: Path) -> None:
    result = hivemind(
        tmp_path / "c", "login", "--pool", "127.0.0.1:1", "--user", "x", "--password-stdin", stdin="pw\n"
    )
    assert result.returncode == 1
    assert "cannot reach the HiveMind pool" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture
def cli_worker(pool: PoolProcess) -> Iterator[WorkerProcess]:
    with WorkerProcess(pool, executor="local", name="cli-worker") as worker:
        yield worker


def test_submit_wait_logs_fetch_and_retry(
    pool: PoolProcess, cli_worker: WorkerProcess, signed_in: Path, tmp_path: Path
) -> None:
    job = notebook(
        tmp_path / "project",
        "import os\nos.makedirs('outputs', exist_ok=True)\n"
        "open('outputs/answer.txt', 'w').write(str(n * 14))\nprint('answer', n * 14)",
    )
    result = hivemind(
        signed_in,
        "submit",
        str(job),
        "--cpus",
        "1",
        "--memory",
        "512M",
        "-p",
        "n=3",
        "--name",
        "cli-job",
        "--wait",
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    task_id = result.stdout.splitlines()[0].strip()
    assert "answer 42" in result.stdout and "SUCCEEDED" in result.stderr

    listing = json.loads(hivemind(signed_in, "tasks", "--json").stdout)
    assert [t["id"] for t in listing] == [task_id] and listing[0]["manifest"]["name"] == "cli-job"
    assert "answer 42" in hivemind(signed_in, "logs", task_id).stdout
    shown = hivemind(signed_in, "show", task_id).stdout
    assert "QUEUED" in shown and "RUNNING" in shown and "SUCCEEDED" in shown

    out = tmp_path / "result"
    fetched = hivemind(signed_in, "fetch", task_id, "--to", str(out))
    assert fetched.returncode == 0, fetched.stderr
    assert (out / "outputs" / "answer.txt").read_text() == "42"
    # the executed notebook is named after the task, not after its entry notebook
    assert (out / f"cli-job - {task_id}.ipynb").is_file() and not (out / "job.ipynb").exists()
    assert f"executed notebook: {out / f'cli-job - {task_id}.ipynb'}" in fetched.stdout
    refused = hivemind(signed_in, "fetch", task_id, "--to", str(out))
    assert refused.returncode == 1 and "not empty" in refused.stderr

    again = hivemind(signed_in, "retry", task_id)
    assert again.returncode == 0 and again.stdout.strip() != task_id
    assert "cli-worker" in hivemind(signed_in, "workers").stdout


def test_submitting_a_home_folder_sends_no_secrets_to_the_worker(
    pool: PoolProcess, cli_worker: WorkerProcess, signed_in: Path, tmp_path: Path
) -> None:
    """The folder holds the user's own pool credential (the one this very `submit` signs in with,
    as when a home folder is sent) and an SSH key: the worker's task sees neither, and the person
    is told on stderr what was left out and how to send it on purpose."""
    home = tmp_path / "home"
    notebook(
        home,
        "import os\nfor top, dirs, files in os.walk('.'):\n    for f in files:\n"
        "        print('FILE', os.path.join(top, f))",
    )
    (home / "data.csv").write_text("1,2\n")
    (home / ".ssh").mkdir()
    (home / ".ssh" / "id_rsa").write_text(
        "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n"
    )
    config = home / ".config" / "hivemind"
    config.mkdir(parents=True)
    (config / "credentials.json").write_bytes((signed_in / "credentials.json").read_bytes())
    result = hivemind(config, "submit", str(home), "--memory", "512M", "--wait", timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    seen = [line.split(" ", 1)[1] for line in result.stdout.splitlines() if line.startswith("FILE ")]
    assert "./data.csv" in seen and "./job.ipynb" in seen
    assert not any(".ssh" in name or "credentials" in name for name in seen), seen
    notice = [line for line in result.stderr.splitlines() if "left out as secrets" in line]
    assert len(notice) == 1, result.stderr
    assert ".ssh/" in notice[0] and ".config/hivemind/credentials.json" in notice[0]
    assert "!NAME to .hivemindignore" in notice[0]


ODD_OUTPUTS = (
    "import os\nos.makedirs('outputs', exist_ok=True)\n"
    "open(b'outputs/caf\\xe9.txt', 'wb').write(b'latin-1 name')\n"  # not UTF-8: stored escaped
    "open('outputs/Report.txt', 'w').write('upper')\nopen('outputs/report.txt', 'w').write('lower')"
)


def test_fetch_never_overwrites_and_says_what_was_renamed(
    pool: PoolProcess, cli_worker: WorkerProcess, signed_in: Path, tmp_path: Path
) -> None:
    job = notebook(tmp_path / "odd", ODD_OUTPUTS)
    submitted = hivemind(signed_in, "submit", str(job), "--memory", "512M", "--wait", timeout=240)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    task_id = submitted.stdout.splitlines()[0].strip()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's own notes")
    refused = hivemind(signed_in, "fetch", task_id, "--to", str(mine))
    assert refused.returncode == 1 and "not empty" in refused.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert (mine / "notes.txt").read_text() == "the user's own notes"
    out = tmp_path / "fetched"
    fetched = hivemind(signed_in, "fetch", task_id, "--to", str(out))
    assert fetched.returncode == 0, fetched.stderr
    assert "1 name(s) could not be kept as the task wrote them" in fetched.stdout
    assert "b'outputs/caf\\xe9.txt' -> outputs/caf\\xe9.txt" in fetched.stdout
    assert (out / "outputs" / "caf\\xe9.txt").read_bytes() == b"latin-1 name"
    assert (out / "outputs" / "Report.txt").read_text() == "upper"
    assert (out / "outputs" / "report.txt").read_text() == "lower"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fetched")], "staging left behind"


def test_a_failing_notebook_makes_submit_wait_fail(
    pool: PoolProcess, cli_worker: WorkerProcess, signed_in: Path, tmp_path: Path
) -> None:
    job = notebook(tmp_path / "bad", "raise ValueError('remote boom')")
    result = hivemind(signed_in, "submit", str(job), "--memory", "512M", "--wait", timeout=240)
    assert result.returncode == 1
    assert "FAILED" in result.stderr and "remote boom" in result.stderr


def test_cancel_a_queued_task(pool: PoolProcess, signed_in: Path, tmp_path: Path) -> None:
    job = notebook(tmp_path / "q", "print('never runs')")
    task_id = hivemind(signed_in, "submit", str(job), "--gpus", "4").stdout.strip()
    deadline = time.monotonic() + 15
    while "waiting:" not in (shown := hivemind(signed_in, "show", task_id).stdout):
        assert time.monotonic() < deadline, shown
        time.sleep(0.5)
    assert "no worker" in shown  # the reason a queued task cannot be placed is shown
    result = hivemind(signed_in, "cancel", task_id)
    assert result.returncode == 0 and "CANCELLED" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "missing.ipynb"], "does not exist"),
        (["submit", "{folder}", "--memory", "lots"], "not a size"),
        (["submit", "{folder}", "--disk", "lots"], "not a size"),
        (["submit", "{folder}", "-p", "not-an-assignment"], "NAME=VALUE"),
        (["submit", "{folder}", "--cpus", "0"], "more than 0"),
        (["submit", "{folder}", "--timeout", "soon"], "not a duration"),
        (["submit", "{folder}", "--label", "nolabel"], "KEY=VALUE"),
        (["submit", "{folder}", "--env", "conda"], "--env must be auto, none, freeze, requirements or image"),
        (["submit", "{folder}", "--env", "image"], "--env image needs the image's name: --image NAME"),
        (["submit", "{folder}", "--image", "Bad Image"], "is not an image name"),
        (["submit", "{folder}", "--python", "3.x"], "--python: '3.x' is not a Python version"),
        (["submit", "{folder}", "--requirements", "{folder}/bad-requirements.txt"], "-e is not allowed"),
        (["submit", "{folder}", "--requirements", "{folder}/none.txt"], "does not exist"),
        (["logs", "t-does-not-exist"], "t-does-not-exist"),
        (["cancel", "t-does-not-exist"], "t-does-not-exist"),
    ],
)
def test_bad_input_gets_a_clear_error(signed_in: Path, tmp_path: Path, args: list[str], message: str) -> None:
    folder = tmp_path / "proj"
    notebook(folder, "print(1)")
    (folder / "bad-requirements.txt").write_text("-e ./mine\n")
    result = hivemind(signed_in, *[a.format(folder=folder) for a in args])
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_submit_sends_the_environment_it_was_given(signed_in: Path, tmp_path: Path) -> None:
    """--env auto captures from this Python; a folder's requirements.txt is the default when it has
    one; --env none, --image and --python are recorded in the task's manifest."""
    import numpy

    def manifest_of(*args: str) -> tuple[dict, str]:
        result = hivemind(signed_in, "submit", *args, "--gpus", "0", "--memory", "256M")
        assert result.returncode == 0, result.stderr
        shown = hivemind(signed_in, "show", result.stdout.strip(), "--json")
        return json.loads(shown.stdout)["manifest"], result.stderr

    job = notebook(tmp_path / "auto", "import numpy\nimport torch\nprint(numpy.__version__)")
    manifest, said = manifest_of(str(job))
    environment = manifest["environment"]
    assert environment["mode"] == "auto" and environment["summary"].startswith(f"numpy {numpy.__version__}")
    assert f"hivemind: environment: numpy {numpy.__version__}" in said
    assert "this notebook imports torch but asks for no GPU: add --gpus 1" in said
    (tmp_path / "auto" / "requirements.txt").write_text("numpy==1.26.4\n")
    manifest, said = manifest_of(str(job))
    assert manifest["environment"]["mode"] == "requirements" and "requirements.txt: 1 package" in said
    manifest, _ = manifest_of(str(job), "--env", "auto", "--python", "3.12")
    assert manifest["environment"]["mode"] == "auto" and manifest["environment"]["python_version"] == "3.12"
    assert manifest["environment"]["require_python"] is True
    manifest, _ = manifest_of(str(job), "--env", "none")
    assert manifest["environment"]["mode"] == "none"
    manifest, _ = manifest_of(str(job), "--image", "lab/analysis:2024")
    assert (manifest["environment"]["mode"], manifest["environment"]["image"]) == (
        "image",
        "lab/analysis:2024",
    )


def test_every_command_has_help(tmp_path: Path) -> None:
    for command in [
        "",
        "login",
        "logout",
        "whoami",
        "submit",
        "tasks",
        "show",
        "logs",
        "cancel",
        "retry",
        "fetch",
        "workers",
        "up",
    ]:
        result = hivemind(tmp_path, *([command] if command else []), "--help")
        assert result.returncode == 0 and "usage: hivemind" in result.stdout


def test_hivemind_up_runs_a_notebook_against_its_own_pool(tmp_path: Path) -> None:
    """The README's first command in small: a pool, a local worker, a %%hivemind notebook."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("%load_ext hivemind_jupyter"),
        nbformat.v4.new_code_cell("%%hivemind --memory 512M --pull value\nvalue = 6 * 7\nprint('remote')"),
        nbformat.v4.new_code_cell("print('back home', value)"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "try.ipynb"
    nbformat.write(nb, path)
    env = {**os.environ, "HIVEMIND_CONFIG_DIR": str(tmp_path / "config")}
    # In its own process group: whatever `up` leaves behind is found there, and killed.
    up = processes.start(
        up_command(tmp_path, "--run", str(path)), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = up.communicate(timeout=300)
        left = [_describe(p) for p in processes.group_members(up.pid)]
    finally:
        processes.kill(up)
    stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
    assert up.returncode == 0, stdout + stderr[-3000:]
    assert "remote" in stdout and "back home 42" in stdout
    assert "does not isolate" in stderr  # the local executor says so plainly
    # who signs out can sign in again: `up` says where its password is, and it is there
    secret = tmp_path / "data" / "local-admin.json"
    assert f"use the password in {secret}" in stderr
    assert json.loads(secret.read_text())["password"]
    assert (tmp_path / "data" / "try.executed.ipynb").exists()
    assert not left, f"`hivemind up` exited and left these running: {left}"


def test_hivemind_up_stops_its_pool_and_worker_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "HIVEMIND_CONFIG_DIR": str(tmp_path / "config")}
    log_path = tmp_path / "up.log"
    with open(log_path, "ab") as log:
        up = processes.start(up_command(tmp_path, "--no-lab"), log, env)
    try:
        deadline = time.monotonic() + 120
        while "press Ctrl-C to stop" not in log_path.read_text(errors="replace"):
            assert up.poll() is None, log_path.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        children = psutil.Process(up.pid).children(recursive=True)
        commands = [" ".join(child.cmdline()) for child in children]
        assert any(" serve " in c for c in commands) and any(" run " in c for c in commands), commands
        assert not any("hmj_" in c for c in commands), f"a join token shows in ps: {commands}"
        up.send_signal(signal.SIGTERM)  # only `up` itself, as `kill PID` or a service manager does
        assert up.wait(timeout=90) == 128 + signal.SIGTERM, log_path.read_text(errors="replace")[-3000:]
        alive = [_describe(c) for c in processes.wait_gone(children, timeout=1)]
        assert not alive, f"`hivemind up` was stopped and left these running: {alive}"
        assert not processes.group_members(up.pid)
    finally:
        processes.kill(up)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_text(path: Path, text: str, process: subprocess.Popen[bytes], timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while text not in (log := path.read_text(errors="replace")):
        assert process.poll() is None, log[-3000:]
        assert time.monotonic() < deadline, log[-3000:]
        time.sleep(0.2)
    return log


def test_hivemind_up_starts_jupyterlab_as_root_and_stops_it_all(tmp_path: Path) -> None:
    """As root (as the README sets up) JupyterLab starts, answers HTTP, and SIGTERM stops it all."""
    port = _free_port()
    env = {
        **os.environ,
        "HIVEMIND_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
    }
    work = tmp_path / "work"
    work.mkdir()
    log_path = tmp_path / "up.log"
    with open(log_path, "ab") as log:
        up = processes.start(up_command(tmp_path, "--lab-port", str(port)), log, env, cwd=work)
    try:
        text = _wait_for_text(log_path, "JupyterLab is at", up)
        if os.geteuid() == 0:
            assert text.count("--allow-root") == 1, text[-3000:]  # said once, and why
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api", timeout=10) as answer:
            assert answer.status == 200 and "version" in json.loads(answer.read())
        children = psutil.Process(up.pid).children(recursive=True)
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=120) == 128 + signal.SIGTERM, log_path.read_text(errors="replace")[-3000:]
        alive = [_describe(c) for c in processes.wait_gone(children, timeout=1)]
        assert not alive, f"`hivemind up` was stopped and left these running: {alive}"
        assert not processes.group_members(up.pid)
    finally:
        processes.kill(up)


def test_restarting_hivemind_up_keeps_one_worker(tmp_path: Path) -> None:
    """`up` twice on the same data dir (a new free port each time): still one worker, online."""
    env = {**os.environ, "HIVEMIND_CONFIG_DIR": str(tmp_path / "config")}
    for run in range(2):
        log_path = tmp_path / f"up-{run}.log"
        with open(log_path, "ab") as log:
            up = processes.start(up_command(tmp_path, "--no-lab"), log, env)
        try:
            _wait_for_text(log_path, "press Ctrl-C to stop", up)
            pool_dir = str(tmp_path / "data" / "pool")
            status = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "hivemind_nodepool.cli.admin",
                    "status",
                    "--json",
                    "--data-dir",
                    pool_dir,
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            workers = json.loads(status.stdout)["workers"]
            assert [w["state"] for w in workers] == ["WORKER_ONLINE"], (run, workers)
            up.send_signal(signal.SIGTERM)
            assert up.wait(timeout=120) == 128 + signal.SIGTERM
        finally:
            processes.kill(up)


def test_hivemind_up_fails_in_one_line_when_the_pools_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = hivemind(tmp_path / "config", *up_command(tmp_path, "--port", str(port), "--no-lab")[3:])
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"port {port} on 127.0.0.1 is already in use" in lines[0], result.stderr


def test_hivemind_up_fails_when_jupyterlab_cannot_start(tmp_path: Path) -> None:
    """A part that fails to start (here JupyterLab, its port taken) makes `up` exit non-zero,
    ending on one line that names it, with the pool and worker stopped."""
    env = {
        **os.environ,
        "HIVEMIND_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
    }
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = up_command(tmp_path, "--lab-port", str(port))
        up = processes.start(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _out, err = up.communicate(timeout=300)
            left = [_describe(p) for p in processes.group_members(up.pid)]
        finally:
            processes.kill(up)
    stderr = err.decode(errors="replace")
    assert up.returncode == 1, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last == "hivemind: error: JupyterLab exited with status 1; see its log above", stderr[-3000:]
    assert "Traceback" not in stderr
    assert not left, f"`hivemind up` exited and left these running: {left}"


def up_command(tmp_path: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "hivemind_nodepool.cli.user",
        "up",
        "--data-dir",
        str(tmp_path / "data"),
        "--port",
        "0",
        "--executor",
        "local",
        *args,
    ]


def _describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid}: {' '.join(proc.cmdline())}"
    except psutil.Error:
        return str(proc.pid)
