"""The REST API and the WebSocket against a real pool and a real (local-executor) worker."""

from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from harness import PoolProcess

from hivemind_jupyter.packaging import pack_path
from hivemind_nodepool.client.submission import TaskRequest

PASSWORD, USER = "ada-password-1", "ada"

pytestmark = pytest.mark.slow


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[PoolProcess]:
    """The real pool, serving its metrics too, so tests can count the RPCs the extension makes."""
    with PoolProcess(tmp_path / "pool", extra_args=["--metrics-listen", "127.0.0.1:0"]) as process:
        yield process


def rpc_count(pool: PoolProcess, method: str) -> int:
    """How many times the pool has been called on NodePool/<method> since it started."""
    with urllib.request.urlopen(f"http://{pool.metrics}/metrics", timeout=10) as response:
        text = response.read().decode()
    pattern = rf'^hivemind_rpcs_total{{method="/hivemind.nodepool.v1.NodePool/{method}"}} ([0-9.e+]+)$'
    found = re.search(pattern, text, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def write_notebook(path: Path, *sources: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def wait_state(api, task_id: str, states: set[str], timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, task = api("GET", "tasks", task_id)
        assert status == 200, task
        if task["state"] in states:
            return task
        time.sleep(0.2)
    raise AssertionError(f"{task_id} stayed {task['state']}")


def test_sign_in_and_out(api, pool, hivemind_config_dir: Path):
    pool.add_user(USER, PASSWORD)
    status, body = api("POST", "session", body={"pool": pool.address, "username": USER, "password": "wrong"})
    assert status == 401 and "wrong username or password" in body["error"]
    status, body = api("POST", "session", body={"pool": pool.address, "username": USER, "password": PASSWORD})
    assert status == 200
    assert body == {"signed_in": True, "user": USER, "admin": False, "pool": pool.address}
    saved = hivemind_config_dir / "credentials.json"
    assert saved.stat().st_mode & 0o777 == 0o600
    token = json.loads(saved.read_text())["token"]
    assert token not in json.dumps(body)
    assert api("GET", "session")[1]["signed_in"] is True
    assert api("DELETE", "session")[0] == 204
    assert api("GET", "session")[1]["signed_in"] is False
    assert api("GET", "tasks")[0] == 401


def test_submit_follow_fetch_retry(api, signed_in, local_worker, jp_root_dir: Path):
    project = jp_root_dir / "project"
    write_notebook(
        project / "analysis.ipynb",
        "factor = 1",
        "import os\nos.makedirs('outputs', exist_ok=True)\n"
        "open('outputs/result.txt', 'w').write(str(21 * factor))\nprint('factor is', factor)",
    )
    (project / ".hivemindignore").write_text("big.bin\n")
    (project / "big.bin").write_bytes(b"x" * 1000)
    status, task = api(
        "POST",
        "tasks",
        body={
            "path": "project/analysis.ipynb",
            "parameters": {"factor": 2},
            "memory": "512M",
            "cpus": 0.5,
            "timeout": "5m",
            "labels": {},
            "name": "analysis",
        },
    )
    assert status == 201, task
    assert task["state"] == "QUEUED" and task["manifest"]["name"] == "analysis"
    assert task["manifest"]["resources"]["cpus"] == 0.5
    task_id = task["id"]
    done = wait_state(api, task_id, {"SUCCEEDED", "FAILED"})
    assert done["state"] == "SUCCEEDED", done
    assert done["worker_name"] == "local-worker"

    status, listing = api("GET", "tasks", params={"state": "SUCCEEDED"})
    assert status == 200 and [t["id"] for t in listing["tasks"]] == [task_id] and listing["total"] == 1
    assert api("GET", "tasks", params={"state": "RUNNING"})[1]["tasks"] == []

    status, events = api("GET", "tasks", task_id, "events", params={"after": "0"})
    assert status == 200
    kinds = [e["kind"] for e in events["events"]]
    assert kinds[0] == "STATE" and "STDOUT" in kinds
    assert any("factor is 2" in e["text"] for e in events["events"])
    assert events["last_seq"] == int(events["events"][-1]["seq"])
    status, later = api("GET", "tasks", task_id, "events", params={"after": str(events["last_seq"])})
    assert later == {"events": [], "last_seq": events["last_seq"]}

    status, result = api("POST", "tasks", task_id, "result")
    assert status == 200, result
    assert result["folder"] == f"hivemind-results/analysis-{task_id}"
    assert result["notebook"] == f"{result['folder']}/analysis - {task_id}.ipynb"  # named after the task
    assert f"{result['folder']}/outputs/result.txt" in result["files"]
    assert (jp_root_dir / result["folder"] / "outputs" / "result.txt").read_text() == "42"
    assert not (jp_root_dir / result["folder"] / "big.bin").exists()
    assert api("POST", "tasks", task_id, "result") == (200, result)  # idempotent

    status, retried = api("POST", "tasks", task_id, "retry")
    assert status == 201 and retried["retry_of"] == task_id and retried["id"] != task_id
    wait_state(api, retried["id"], {"SUCCEEDED"})

    status, workers = api("GET", "workers")
    assert status == 200 and workers["workers"][0]["name"] == "local-worker"
    # what the panel's pool view shows of it: the Pythons it runs (the local executor: its own)
    # and its environment cache, as its heartbeats report it
    facts = workers["workers"][0]["facts"]
    assert facts["python_versions"] == [f"{sys.version_info.major}.{sys.version_info.minor}"], facts
    assert isinstance(facts["images"], list)
    cache = workers["workers"][0].get("env_cache")
    deadline = time.monotonic() + 30
    while cache is None and time.monotonic() < deadline:  # a heartbeat after the tasks ran
        time.sleep(0.5)
        cache = api("GET", "workers")[1]["workers"][0].get("env_cache")
    assert cache is not None, "the worker's environment cache never reached the REST view"
    assert set(cache) == {"environments", "size_bytes", "hits", "builds", "failures"}, cache
    status, pool_status = api("GET", "pool")
    assert status == 200 and pool_status["workers_online"] == 1


def test_open_result_never_overwrites_and_says_what_was_renamed(
    api, signed_in, local_worker, jp_root_dir: Path
):
    """The panel's "open result": the result gets a folder of its own beside one of the user's that
    has its name, and a name that had to change on the way (here one that is not UTF-8 on the
    worker) is listed; names that differ in case arrive as two files."""
    write_notebook(
        jp_root_dir / "odd" / "odd.ipynb",
        "import os\nos.makedirs('outputs', exist_ok=True)\n"
        "open(b'outputs/caf\\xe9.txt', 'wb').write(b'latin-1 name')\n"
        "open('outputs/Report.txt', 'w').write('upper')\nopen('outputs/report.txt', 'w').write('lower')",
    )
    status, task = api("POST", "tasks", body={"path": "odd/odd.ipynb", "memory": "512M", "name": "odd"})
    assert status == 201, task
    assert wait_state(api, task["id"], {"SUCCEEDED", "FAILED"})["state"] == "SUCCEEDED"
    mine = jp_root_dir / "hivemind-results" / f"odd-{task['id']}"
    mine.mkdir(parents=True)
    (mine / "keep.txt").write_text("the user's own file")
    status, result = api("POST", "tasks", task["id"], "result")
    assert status == 200, result
    assert result["folder"] == f"hivemind-results/odd-{task['id']}-2"
    assert sorted(p.name for p in mine.iterdir()) == ["keep.txt"]
    assert (mine / "keep.txt").read_text() == "the user's own file"
    assert result["renamed"] == [{"from": "b'outputs/caf\\xe9.txt'", "to": "outputs/caf\\xe9.txt"}]
    folder = jp_root_dir / result["folder"]
    assert (folder / "outputs" / "caf\\xe9.txt").read_bytes() == b"latin-1 name"
    assert (folder / "outputs" / "Report.txt").read_text() == "upper"
    assert (folder / "outputs" / "report.txt").read_text() == "lower"
    assert api("POST", "tasks", task["id"], "result") == (200, result)  # found again, as itself


def test_a_hostile_workers_result_never_reaches_the_user(api, signed_in, jp_root_dir: Path, tmp_path: Path):
    """A worker that uploads a result climbing out of its folder: the pool refuses it and ends the
    task with the reason, so "open result" has nothing to unpack."""
    import zipfile

    from harness import FakeWorker

    from hivemind_nodepool.proto import nodepool_pb2 as pb
    from hivemind_nodepool.protocol.errors import ResultRefused

    write_notebook(jp_root_dir / "victim" / "v.ipynb", "x = 1")
    status, task = api("POST", "tasks", body={"path": "victim/v.ipynb", "memory": "512M"})
    assert status == 201, task
    hostile = tmp_path / "hostile.zip"
    with zipfile.ZipFile(hostile, "w") as archive:
        archive.writestr("main.ipynb", "{}")
        archive.writestr("../../../escaped.txt", "x")
    worker = FakeWorker(signed_in.address, signed_in.join_token(), name="rogue").connect()
    try:
        assignment = worker.next_assignment()
        with pytest.raises(ResultRefused):
            worker.finish(assignment, pb.SUCCEEDED, hostile)
    finally:
        worker.close()
    done = wait_state(api, task["id"], {"FAILED"})
    assert done["error"].startswith("the result was refused: entry '../../../escaped.txt' climbs out")
    status, body = api("POST", "tasks", task["id"], "result")
    assert status == 409 and "no result" in body["error"]
    assert not list(jp_root_dir.parent.rglob("escaped.txt"))


def test_submit_a_folder_and_cancel(api, signed_in, local_worker, jp_root_dir: Path):
    write_notebook(jp_root_dir / "slow" / "sleep.ipynb", "seconds = 120", "import time\ntime.sleep(seconds)")
    write_notebook(jp_root_dir / "slow" / "other.ipynb", "x = 1")
    status, body = api("POST", "tasks", body={"path": "slow"})
    assert status == 400 and '"entry"' in body["error"]
    status, task = api("POST", "tasks", body={"path": "slow", "entry": "sleep.ipynb", "memory": "512M"})
    assert status == 201, task
    wait_state(api, task["id"], {"RUNNING"})
    status, cancelled = api("POST", "tasks", task["id"], "cancel")
    assert status == 200 and cancelled["id"] == task["id"]
    assert wait_state(api, task["id"], {"CANCELLED"}, timeout=30)["state"] == "CANCELLED"
    status, body = api("POST", "tasks", task["id"], "result")
    assert status in (200, 409)


def test_submit_a_folder_leaves_secrets_out_and_says_so(api, signed_in, jp_root_dir: Path):
    write_notebook(jp_root_dir / "home" / "nb.ipynb", "x = 1")
    (jp_root_dir / "home" / ".ssh").mkdir()
    (jp_root_dir / "home" / ".ssh" / "id_rsa").write_text("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n")
    (jp_root_dir / "home" / ".env").write_text("TOKEN=1\n")
    status, task = api("POST", "tasks", body={"path": "home", "memory": "256M"})
    assert status == 201, task
    assert task["left_out"] == [".env", ".ssh/"]
    assert ".ssh/" in task["notice"] and "!NAME to .hivemindignore" in task["notice"]
    (jp_root_dir / "home" / ".hivemindignore").write_text("!.env\n")
    status, task = api("POST", "tasks", body={"path": "home/nb.ipynb", "memory": "256M"})
    assert status == 201 and task["left_out"] == [".ssh/"], task
    (jp_root_dir / "clean").mkdir()
    write_notebook(jp_root_dir / "clean" / "nb.ipynb", "x = 1")
    status, task = api("POST", "tasks", body={"path": "clean/nb.ipynb", "memory": "256M"})
    assert status == 201 and task["left_out"] == [] and task["notice"] == ""


def test_another_users_task_is_404(api, signed_in, jp_root_dir: Path, tmp_path: Path):
    signed_in.add_user("bob", "bob-password-1")
    bob = signed_in.login("bob", "bob-password-1")
    write_notebook(tmp_path / "bob" / "nb.ipynb", "x = 1")
    manifest, packed = pack_path(tmp_path / "bob" / "nb.ipynb", TaskRequest(memory="512M"), tmp_path)
    theirs = bob.submit(manifest, packed.path)
    for method, path in [
        ("GET", ()),
        ("POST", ("cancel",)),
        ("POST", ("retry",)),
        ("POST", ("result",)),
        ("GET", ("events",)),
    ]:
        status, body = api(method, "tasks", theirs.id, *path)
        assert status == 404, (path, body)
        assert theirs.id in body["error"]
    assert api("GET", "tasks")[1]["tasks"] == []
    assert api("GET", "tasks", "t-unknown")[0] == 404
    assert api("GET", "tasks", "bad id!")[0] in (400, 404)
    assert bob.get_task(theirs.id).state == theirs.state  # untouched


def test_folder_over_the_cap_names_the_biggest_files(api, signed_in, jp_root_dir: Path, jp_serverapp):
    jp_serverapp.web_app.settings["hivemind_settings"].max_bundle_size = "1M"
    write_notebook(jp_root_dir / "heavy" / "nb.ipynb", "x = 1")
    (jp_root_dir / "heavy" / "weights.bin").write_bytes(b"\0" * 2_000_000)
    status, body = api("POST", "tasks", body={"path": "heavy/nb.ipynb"})
    assert status == 400 and "weights.bin" in body["error"] and ".hivemindignore" in body["error"]


def test_a_bundle_over_the_pools_limit_is_413(
    api, hivemind_config_dir: Path, jp_root_dir: Path, tmp_path: Path
):
    """The pool's TooLarge reaches the REST caller as 413, not as a rate limit's 429."""
    from hivemind_jupyter.config import HiveMind
    from hivemind_jupyter.pool import PoolConnector

    with PoolProcess(tmp_path / "small-pool", extra_args=["--max-bundle-size", "64K"]) as small:
        small.add_user(USER, PASSWORD)
        PoolConnector(HiveMind()).sign_in(USER, PASSWORD, small.address)
        write_notebook(jp_root_dir / "big" / "nb.ipynb", "x = 1")
        (jp_root_dir / "big" / "noise.bin").write_bytes(os.urandom(200_000))  # does not compress
        status, body = api("POST", "tasks", body={"path": "big/nb.ipynb", "memory": "512M"})
        assert status == 413, body
        assert body["status"] == 413 and "larger than the pool's limit of 65536" in body["error"]
        # The other RESOURCE_EXHAUSTED of the pool, a rate limit, stays apart: 429, its own words.
        for _ in range(5):
            status, body = api(
                "POST", "session", body={"pool": small.address, "username": USER, "password": "wrong"}
            )
            assert status == 401, body
        status, limited = api(
            "POST", "session", body={"pool": small.address, "username": USER, "password": "wrong"}
        )
        assert status == 429 and limited["status"] == 429, limited
        assert "too many failed sign-ins" in limited["error"] and "limit of" not in limited["error"]


def test_stream_pushes_task_changes_and_events(
    api, signed_in, local_worker, jp_root_dir: Path, jp_ws_fetch, jp_asyncio_loop, jp_serverapp
):
    write_notebook(jp_root_dir / "ws" / "nb.ipynb", "n = 3", "for i in range(n):\n    print('line', i)")
    run = jp_asyncio_loop.run_until_complete
    first = run(jp_ws_fetch("hivemind", "api", "stream"))
    second = run(jp_ws_fetch("hivemind", "api", "stream"))
    status, task = api("POST", "tasks", body={"path": "ws/nb.ipynb", "memory": "512M"})
    assert status == 201
    task_id = task["id"]
    for socket in (first, second):
        socket.write_message(json.dumps({"subscribe": task_id, "after": 0}))

    def collect(socket) -> tuple[list[str], list[dict]]:
        states, events = [], []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            message = json.loads(run(socket.read_message()))
            if message["type"] == "task" and message["task"]["id"] == task_id:
                states.append(message["task"]["state"])
            elif message["type"] == "event":
                assert message["task_id"] == task_id
                events.append(message["event"])
                if message["event"]["kind"] == "STATE" and message["event"]["state"] == "SUCCEEDED":
                    return states, events
        raise AssertionError("no SUCCEEDED event")

    for socket in (first, second):
        states, events = collect(socket)
        seqs = [int(e["seq"]) for e in events]
        assert seqs == list(range(1, len(seqs) + 1))  # in order, each once, no gaps
        text = "".join(e["text"] for e in events if e["kind"] == "STDOUT")
        assert text == "line 0\nline 1\nline 2\n"
        assert states  # task changes pushed without asking
    feed = jp_serverapp.web_app.settings["hivemind_feed"]
    assert len(feed.sockets) == 2 and len(feed.watchers) <= 1  # one watcher for both sockets
    # Pushed, not polled: one pool stream for both sockets, and the task list read only once (when
    # it connected), however long the sockets stay open.
    assert rpc_count(signed_in, "WatchTasks") == 1 and feed.pushed > 0
    assert rpc_count(signed_in, "ListTasks") == feed.resyncs == 1
    time.sleep(2)
    assert rpc_count(signed_in, "ListTasks") == 1
    first.write_message(json.dumps({"subscribe": "t-nope", "after": 0}))
    first.write_message("not json")
    first.write_message(json.dumps({"subscribe": task_id, "after": -1}))
    errors: list[dict] = []
    while len(errors) < 3:  # task pushes may arrive in between: only the error replies count here
        reply = json.loads(run(first.read_message()))
        if reply["type"] == "error":
            errors.append(reply)
    assert sorted(r["status"] for r in errors) == [400, 400, 404]
    first.close()
    second.close()


def _next_message(run, socket, predicate, timeout: float = 60) -> dict:
    """The first message on the socket that satisfies predicate (others are skipped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = json.loads(run(socket.read_message()))
        if predicate(message):
            return message
    raise AssertionError("the expected message did not come")


def _run_loop_for(run, seconds: float) -> None:
    import asyncio

    run(asyncio.sleep(seconds))


def test_stream_survives_a_pool_restart_and_follows_sign_out(
    api, signed_in, jp_ws_fetch, jp_asyncio_loop, jp_serverapp, jp_root_dir: Path
):
    write_notebook(jp_root_dir / "r" / "nb.ipynb", "x = 1")
    run = jp_asyncio_loop.run_until_complete
    socket = run(jp_ws_fetch("hivemind", "api", "stream"))
    feed = jp_serverapp.web_app.settings["hivemind_feed"]
    deadline = time.monotonic() + 30
    while feed.resyncs < 1 and time.monotonic() < deadline:
        _run_loop_for(run, 0.1)
    assert feed.resyncs == 1
    status, before = api("POST", "tasks", body={"path": "r/nb.ipynb", "memory": "512M"})
    assert status == 201
    _next_message(run, socket, lambda m: m["type"] == "task" and m["task"]["id"] == before["id"])
    signed_in.restart()
    # The feed reconnects by itself and reads the list once more; a task submitted now is pushed.
    while feed.resyncs < 2 and time.monotonic() < deadline + 60:
        _run_loop_for(run, 0.2)
    assert feed.resyncs == 2
    status, after = api("POST", "tasks", body={"path": "r/nb.ipynb", "memory": "512M"})
    assert status == 201, after
    _next_message(run, socket, lambda m: m["type"] == "task" and m["task"]["id"] == after["id"])
    assert api("DELETE", "session")[0] == 204
    message = _next_message(run, socket, lambda m: m["type"] == "session")
    assert message == {"type": "session", "signed_in": False}
    socket.close()


def test_stream_sockets_are_dropped_when_the_pool_refuses_the_sign_in(
    api, signed_in, jp_ws_fetch, jp_asyncio_loop, jp_serverapp
):
    """An admin disables the user: every socket is told and closed, none goes on being fed."""
    run = jp_asyncio_loop.run_until_complete
    sockets = [run(jp_ws_fetch("hivemind", "api", "stream")) for _ in range(2)]
    feed = jp_serverapp.web_app.settings["hivemind_feed"]
    deadline = time.monotonic() + 30
    while feed.resyncs < 1 and time.monotonic() < deadline:
        _run_loop_for(run, 0.1)
    assert feed.resyncs == 1 and len(feed.sockets) == 2
    with signed_in.admin() as admin:
        admin.disable_user(USER)
    for socket in sockets:
        seen = []
        while True:  # the session message, then the close (read_message answers None)
            raw = run(socket.read_message())
            if raw is None:
                break
            seen.append(json.loads(raw))
        assert seen[-1]["type"] == "session" and seen[-1]["signed_in"] is False
        assert "disabled" in seen[-1]["reason"]
        assert socket.close_code == 4401
    assert not feed.sockets and not feed.watchers
