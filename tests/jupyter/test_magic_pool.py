"""%%hivemind in a real IPython shell against a real pool and a real (local-executor) worker."""

from __future__ import annotations

import _thread
import base64
import io
import re
import sys
import threading
import time
from pathlib import Path

import pytest
from IPython.utils.capture import capture_output

from hivemind_jupyter.errors import DoesNotFit, RemoteTaskError
from hivemind_nodepool.client import PoolClient
from hivemind_nodepool.client.credentials import load
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.states import TERMINAL_STATES, elapsed_seconds
from hivemind_nodepool.protocol.units import format_duration

pytestmark = pytest.mark.slow

# A 1x1 PNG, so the remote cell can show an image without matplotlib.
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360f8cfc0f01f0005fe02fea73581"
        "840000000049454e44ae426082"
    )
).decode()


def my_client() -> PoolClient:
    saved = load()
    assert saved is not None
    return PoolClient(saved.pool, token=saved.token)


def wait_for_state(task_id: str, states: set[int], timeout: float = 60) -> pb.Task:
    client = my_client()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = client.get_task(task_id)
        if task.state in states:
            return task
        time.sleep(0.1)
    raise AssertionError(f"{task_id} never reached {states}; it is {task.state}")


def test_outputs_push_pull_and_parameters(signed_in, local_worker, shell):
    shell.user_ns["x"] = 21
    shell.user_ns["frame"] = {"rows": [1, 2, 3]}
    cell = f"""
import base64
from IPython.display import HTML, Image, display
print("hello", x, n, label)
display(HTML("<b>remote html</b>"))
display(Image(data=base64.b64decode("{PNG}")))
y = x * n
rows = frame["rows"] + [4]
{{"answer": y}}
"""
    with capture_output() as captured:
        result = shell.run_cell(
            f"%%hivemind --push x,frame --pull y,rows,nothere -p n=2 -p label=abc "
            f"--memory 512M --name demo\n{cell}"
        )
    assert result.error_in_exec is None, captured.stdout + captured.stderr
    assert "hello 21 2 abc" in captured.stdout
    mimes = [output.data for output in captured.outputs]
    assert any(m.get("text/html") == "<b>remote html</b>" for m in mimes)
    assert any("image/png" in m for m in mimes)
    assert any("{'answer': 42}" in m.get("text/plain", "") for m in mimes)
    assert shell.user_ns["y"] == 42
    assert shell.user_ns["rows"] == [1, 2, 3, 4]
    assert "nothere" not in shell.user_ns
    assert "variable nothere did not come back" in captured.stdout  # a notice, not stderr
    assert "did not come back" not in captured.stderr
    assert "SUCCEEDED" in captured.stderr
    # nothing the user asked for (no output files, no failure, no --save): nothing beside the notebook
    assert not Path("hivemind-results").exists()
    assert "files in" not in captured.stdout + captured.stderr


def test_save_keeps_the_whole_result_and_fetch_gets_it_on_demand(signed_in, local_worker, shell):
    with capture_output() as captured:
        result = shell.run_cell("%%hivemind --memory 512M --name kept --save\nprint('saved run')")
    assert result.error_in_exec is None, captured.stdout + captured.stderr
    (folder,) = Path("hivemind-results").glob("kept-t-*")
    task_id = folder.name.removeprefix("kept-")
    assert (folder / f"kept - {task_id}.ipynb").is_file()  # the executed notebook, named after the task
    assert f"files in hivemind-results/{folder.name}/" in captured.stderr  # the one quiet line
    # a plain cell's result stays on the pool; the handle (or %hivemind fetch) brings it on demand
    with capture_output():
        handle = shell.run_cell_magic("hivemind", "--no-wait --memory 512M --name later", "print('later')")
        handle.wait()
    assert not list(Path("hivemind-results").glob("later-*"))
    fetched = handle.fetch()
    assert fetched == Path.cwd() / "hivemind-results" / f"later-{handle.id}"
    assert "later" in (fetched / f"later - {handle.id}.ipynb").read_text()
    with capture_output() as told:
        shell.run_line_magic("hivemind", f"fetch {handle.id} --to elsewhere")
    assert (Path("elsewhere") / f"later - {handle.id}.ipynb").is_file(), told.stdout + told.stderr


class Recorder(io.TextIOBase):
    """A stdout that notes the task's state the moment a marker line arrives."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.text = ""
        self.state_when_seen: int | None = None

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.text += text
        if self.marker in text and self.state_when_seen is None:
            client = my_client()
            task = client.list_tasks(page_size=1).tasks[0]
            self.state_when_seen = task.state
        return len(text)


def test_renamed_result_names_are_told_in_the_cell(signed_in, local_worker, shell):
    cell = "import os\nos.makedirs('outputs', exist_ok=True)\nopen(b'outputs/caf\\xe9.txt', 'wb').write(b'x')"
    with capture_output() as captured:
        result = shell.run_cell(f"%%hivemind --memory 512M --name odd\n{cell}")
    assert result.error_in_exec is None, captured.stdout + captured.stderr
    assert "[hivemind] 1 name(s) in the result could not be kept as the task wrote them" in captured.stderr
    assert "b'outputs/caf\\xe9.txt' -> outputs/caf\\xe9.txt" in captured.stderr
    (folder,) = Path("hivemind-results").glob("odd-t-*")
    assert (folder / "outputs" / "caf\\xe9.txt").read_bytes() == b"x"


def test_stdout_arrives_before_the_task_ends(signed_in, local_worker, shell, monkeypatch):
    recorder = Recorder("first line")
    monkeypatch.setattr(sys, "stdout", recorder)
    result = shell.run_cell(
        "%%hivemind --memory 512M\nimport time\nprint('first line', flush=True)\n"
        "time.sleep(4)\nprint('last line')\n"
    )
    monkeypatch.undo()
    assert result.error_in_exec is None
    assert recorder.state_when_seen is not None
    assert recorder.state_when_seen not in TERMINAL_STATES
    assert recorder.text.index("first line") < recorder.text.index("last line")


def test_remote_error_fails_the_cell_with_the_remote_traceback(signed_in, local_worker, shell):
    with capture_output() as captured:
        result = shell.run_cell(
            "%%hivemind --memory 512M\nprint('before')\ndef boom():\n    return 1 / 0\nboom()\n"
        )
    assert isinstance(result.error_in_exec, RemoteTaskError)
    assert result.error_in_exec.state == "FAILED"
    assert "before" in captured.stdout
    assert "ZeroDivisionError" in captured.stdout and "boom" in captured.stdout
    assert "ended FAILED" in captured.stdout
    assert "hivemind_jupyter/handle.py" not in captured.stdout  # the remote traceback, not ours


def test_no_wait_handle_and_attach(signed_in, local_worker, shell):
    with capture_output():
        handle = shell.run_cell_magic(
            "hivemind",
            "--no-wait --memory 512M --pull z",
            "import time\nprint('working')\ntime.sleep(1)\nz = 'done'\n",
        )
    assert handle.status() in {"QUEUED", "ASSIGNED", "PREPARING", "RUNNING", "UPLOADING", "SUCCEEDED"}
    assert handle.id in repr(handle)
    with capture_output():
        assert handle.wait() == "SUCCEEDED"
    assert handle.logs() == "working\n"
    assert shell.user_ns["z"] == "done"
    result = handle.result()
    assert result.variables == {"z": "done"} and result.outputs  # read from the result
    assert result.folder is None and result.notebook is None  # nothing asked for: nothing kept
    # After a "restart": a fresh handle from the id alone.
    shell.user_ns.pop("z")
    with capture_output():
        again = shell.run_line_magic("hivemind", f"attach {handle.id}")
        again.result()
    assert shell.user_ns["z"] == "done"
    with capture_output() as captured:
        shell.run_line_magic("hivemind", "tasks")
        shell.run_line_magic("hivemind", f"logs {handle.id}")
        shell.run_line_magic("hivemind", "status")
    assert handle.id in captured.stdout and "working" in captured.stdout and "local-worker" in captured.stdout
    with capture_output():
        result = shell.run_cell("%hivemind attach t-does-not-exist")
    assert result.error_in_exec is not None


def test_a_no_wait_handle_has_one_status_line_with_one_time(signed_in, local_worker, shell):
    with capture_output():
        handle = shell.run_cell_magic(
            "hivemind", "--no-wait --memory 512M", "import time\ntime.sleep(1)\nprint('done')\n"
        )
    wait_for_state(handle.id, TERMINAL_STATES)
    time.sleep(2)  # read well after the end: the time shown must still be the task's own
    with capture_output() as captured:
        handle.result()
    lines = [line for line in captured.stderr.splitlines() if handle.id in line or "SUCCEEDED" in line]
    assert len(lines) == 1, captured.stderr
    task = handle.task()
    expected = format_duration(elapsed_seconds(task, time.time()))
    assert f"{handle.id}: SUCCEEDED in {expected}" in lines[0], (lines[0], expected)
    assert len(re.findall(r"\d+(?:\.\d+)?s\b", lines[0])) == 1, lines[0]  # one time only


def test_a_request_no_worker_fits_says_so_at_once(signed_in, local_worker, shell):
    began = time.monotonic()
    with capture_output() as captured:
        result = shell.run_cell("%%hivemind --cpus 64 --memory 512M\nprint('never')\n")
    took = time.monotonic() - began
    print(f"the cell ended {took:.1f} s after it started")
    assert isinstance(result.error_in_exec, DoesNotFit), captured.stdout + captured.stderr
    lines = captured.stdout.strip().splitlines()
    assert len(lines) == 1, captured.stdout
    cpus = local_worker.wait_online().capacity.cpus
    assert f"needs 64 CPUs, the largest worker has {cpus:g}" in lines[0], lines[0]
    assert "--wait-for-fit" in lines[0] and "never" not in captured.stdout
    task = my_client().list_tasks(page_size=1).tasks[0]
    assert wait_for_state(task.id, {pb.CANCELLED}).state == pb.CANCELLED  # not left queued for ever


@pytest.mark.parametrize("how", ["--wait-for-fit", "setting"])
def test_wait_for_fit_keeps_waiting(signed_in, local_worker, shell, how):
    if how == "setting":
        shell.run_line_magic("config", "HiveMind.wait_for_fit = True")
    holder: dict = {}

    def interrupt_once_explained() -> None:
        client = my_client()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            tasks = client.list_tasks([pb.QUEUED], page_size=1).tasks
            if tasks and tasks[0].pending_reason:
                time.sleep(2)  # well past the moment a cell without --wait-for-fit ends
                holder["state"] = client.get_task(tasks[0].id).state
                _thread.interrupt_main()
                return
            time.sleep(0.1)

    threading.Thread(target=interrupt_once_explained, daemon=True).start()
    option = "--wait-for-fit " if how == "--wait-for-fit" else ""
    with capture_output() as captured:
        result = shell.run_cell(f"%%hivemind {option}--cpus 64 --memory 512M\nprint('never')\n")
    assert isinstance(result.error_in_exec, KeyboardInterrupt), captured.stdout
    assert holder["state"] == pb.QUEUED


def _interrupt_when_running(holder: dict) -> None:
    client = my_client()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        tasks = client.list_tasks([pb.RUNNING], page_size=1).tasks
        if tasks and any(
            "started" in event.text for event in client.watch(tasks[0].id, follow=False, reconnect_for=5)
        ):
            holder["task_id"] = tasks[0].id
            _thread.interrupt_main()
            return
        time.sleep(0.1)


@pytest.mark.parametrize("action", ["cancel", "detach"])
def test_interrupt_cancels_or_detaches(signed_in, local_worker, shell, action):
    shell.run_line_magic("config", f"HiveMind.interrupt_action = '{action}'")
    holder: dict = {}
    threading.Thread(target=_interrupt_when_running, args=(holder,), daemon=True).start()
    with capture_output() as captured:
        result = shell.run_cell(
            "%%hivemind --memory 512M\nimport time\nprint('started', flush=True)\ntime.sleep(120)\n"
        )
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    task_id = holder["task_id"]
    shown = captured.stdout + captured.stderr
    assert "Traceback" not in shown and "handle.py" not in shown and "queue.py" not in shown, shown
    if action == "cancel":
        lines = [line for line in shown.splitlines() if "ancel" in line]
        assert len(lines) == 1 and lines[0].startswith("Cancelled on the pool after "), shown
        assert wait_for_state(task_id, {pb.CANCELLED}, timeout=30).state == pb.CANCELLED
        # The attempt's partial result came back, where the line says.
        assert "; partial result in hivemind-results/" in lines[0], lines[0]
        folder = Path(lines[0].split("; partial result in ")[1].rstrip("/"))
        (executed,) = folder.glob(f"* - {task_id}.ipynb")  # named after the task
        assert "started" in executed.read_text()
    else:
        lines = [line for line in shown.splitlines() if "etached" in line]
        assert len(lines) == 1 and f"%hivemind attach {task_id}" in lines[0], shown
        assert my_client().get_task(task_id).state not in TERMINAL_STATES
        my_client().cancel_task(task_id)


def test_a_cell_task_is_named_after_its_notebook_and_cell(signed_in, local_worker, shell):
    """Without --name, a task says which notebook and cell it came from, and carries its code's start."""
    shell.user_ns["__session__"] = "/home/ada/project/analysis.ipynb"
    shell.execution_count = 4
    code = "print('first line')\n" + "".join(f"x{i} = {i}\n" for i in range(400))
    with capture_output():
        handle = shell.run_cell_magic("hivemind", "--no-wait --memory 512M", code)
    task = my_client().get_task(handle.id)
    assert task.manifest.name == "analysis.ipynb [4]"
    preview = task.manifest.code_preview
    assert preview.startswith("print('first line')\nx0 = 0\n")
    assert preview.endswith("…") and len(preview.encode()) <= 2048  # bounded, not the whole cell
    with capture_output():
        named = shell.run_cell_magic("hivemind", "--no-wait --memory 512M --name nightly", "x = 1")
    assert my_client().get_task(named.id).manifest.name == "nightly"
    with capture_output():
        handle.wait()
        named.wait()


def test_dir_leaves_secrets_behind_and_says_so(signed_in, local_worker, shell, tmp_path: Path):
    """`--dir` with an SSH key and a `.env` in it: the remote cell sees neither, and the cell's
    output names them with the way to send one on purpose."""
    folder = tmp_path / "project"
    (folder / ".ssh").mkdir(parents=True)
    (folder / ".ssh" / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n")
    (folder / ".env").write_text("API_TOKEN=hm-secret\n")
    (folder / "data.csv").write_text("1,2\n")
    cell = "import os\nprint(sorted(os.path.join(t, f) for t, _, fs in os.walk('.') for f in fs))\n"
    with capture_output() as captured:
        result = shell.run_cell(f"%%hivemind --dir {folder} --memory 512M\n{cell}")
    assert result.error_in_exec is None, captured.stdout + captured.stderr
    assert "./data.csv" in captured.stdout
    assert ".ssh" not in captured.stdout and ".env" not in captured.stdout
    notice = [line for line in captured.stderr.splitlines() if "left out as secrets" in line]
    assert len(notice) == 1 and ".ssh/" in notice[0] and ".env" in notice[0], captured.stderr
    assert "!NAME to .hivemindignore" in notice[0]


SAFE_FORMS_CELL = """
import numpy as np, pandas as pd
arr = np.arange(12, dtype=np.int32).reshape(3, 4)
scalar = np.float32(1.5)
frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}, index=["r1", "r2"])
series = pd.Series([0.5, 1.5], name="s")
blob = b"\\x00\\xff"
nan = float("nan")
text = "na\\u00efve"
nested = {"k": [1, 2.5, None, True]}
pair = (1, 2)
objects = np.array([{"a": 1}], dtype=object)
"""
SAFE_NAMES = "arr,scalar,frame,series,blob,nan,text,nested,pair,objects"


def test_pulled_values_come_back_in_forms_that_cannot_run_code(signed_in, local_worker, shell):
    """numpy arrays as .npy, pandas values as Parquet, JSON, bytes: loaded without pickle. A
    tuple or an object array has only a pickle form: refused with how to opt in, and loaded with
    --pull-pickle. `--env none`: the local worker's own Python has numpy, pandas and pyarrow, so
    no environment is built (tests use no package index)."""
    import math

    import numpy as np
    import pandas as pd

    with capture_output() as captured:
        result = shell.run_cell(f"%%hivemind --pull {SAFE_NAMES} --memory 1G --env none\n{SAFE_FORMS_CELL}")
    assert result.error_in_exec is None, captured.stdout + captured.stderr
    ns = shell.user_ns
    assert ns["arr"].dtype == np.int32 and ns["arr"].tolist() == np.arange(12).reshape(3, 4).tolist()
    assert isinstance(ns["scalar"], np.float32) and ns["scalar"] == 1.5
    pd.testing.assert_frame_equal(
        ns["frame"], pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}, index=["r1", "r2"])
    )
    pd.testing.assert_series_equal(ns["series"], pd.Series([0.5, 1.5], name="s"))
    assert ns["blob"] == b"\x00\xff" and math.isnan(ns["nan"]) and ns["text"] == "na\u00efve"
    assert ns["nested"] == {"k": [1, 2.5, None, True]}
    assert "pair" not in ns and "objects" not in ns
    problems = {line.split()[2]: line for line in captured.stdout.splitlines() if "did not come back" in line}
    assert set(problems) == {"pair", "objects"}, captured.stdout
    assert "--pull-pickle" in problems["pair"] and "builtins.tuple" in problems["pair"]
    assert "array of Python objects" in problems["objects"]

    with capture_output() as captured:
        result = shell.run_cell(
            f"%%hivemind --pull pair,objects --pull-pickle --memory 1G --env none\n{SAFE_FORMS_CELL}"
        )
    assert result.error_in_exec is None, captured.stderr
    assert ns["pair"] == (1, 2) and ns["objects"][0] == {"a": 1}


def test_a_frame_without_pyarrow_in_the_task_is_refused_clearly(signed_in, local_worker, shell):
    cell = "import sys\nimport pandas as pd\nsys.modules['pyarrow'] = None  # as if not installed\n"
    cell += "frame = pd.DataFrame({'a': [1]})\n"
    with capture_output() as captured:
        result = shell.run_cell(f"%%hivemind --pull frame --memory 1G --env none\n{cell}")
    assert result.error_in_exec is None, captured.stderr
    assert "frame" not in shell.user_ns
    # a HiveMind notice: a prefixed stdout line in a terminal, not stderr
    line = next(line for line in captured.stdout.splitlines() if "variable frame did not come back" in line)
    assert "needs pyarrow in the task's environment" in line
