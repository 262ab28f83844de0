"""Proofs from inside a task that the container is locked down."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness.worker import WorkerProcess

from hivemind_nodepool.proto import nodepool_pb2 as pb

from .helpers import MiB, bundle, notebook, result_files, submit, task_containers, user, wait_state

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PROBE = r"""
import json, os, socket, subprocess, sys
found = {}

# Network: no interface but loopback, so nothing outside answers.
try:
    socket.create_connection(("1.1.1.1", 53), timeout=3).close()
    found["network"] = "reachable"
except OSError as exc:
    found["network"] = "unreachable: %s" % exc
try:
    socket.getaddrinfo("pypi.org", 443)
    found["dns"] = "resolves"
except OSError as exc:
    found["dns"] = "fails: %s" % exc
found["interfaces"] = sorted(os.listdir("/sys/class/net"))

# Root filesystem: read-only; /tmp (tmpfs) and the task folder are writable.
for path in ("/etc/hivemind-probe", "/usr/hivemind-probe", "/hivemind-probe"):
    try:
        open(path, "w").write("x")
        found[path] = "written"
    except OSError as exc:
        found[path] = "refused: %s" % exc.strerror
open("/tmp/ok", "w").write("ok")
open("probe.txt", "w").write("ok")

# The worker's lease: the task can read it but not extend it.
found["lease_readable"] = float(open("/hivemind/lease/expires").read()) > 0
for path in ("/hivemind/lease/expires", "/hivemind/lease/new"):
    try:
        open(path, "w").write("9999999999")
        found[path] = "written"
    except OSError as exc:
        found[path] = "refused: %s" % exc.strerror

# Privileges: not root, no capabilities, no way to gain any (setuid binaries gain nothing).
found["uid"] = os.getuid()
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
found["CapEff"] = status["CapEff"].strip()
found["CapBnd"] = status["CapBnd"].strip()
found["NoNewPrivs"] = status["NoNewPrivs"].strip()
try:
    os.setuid(0)
    found["setuid"] = "became root"
except PermissionError as exc:
    found["setuid"] = "refused: %s" % exc
setuid_files = subprocess.run("find / -xdev -perm -4000 -type f 2>/dev/null | head -1", shell=True,
                              capture_output=True, text=True).stdout.split()
if setuid_files:  # run a setuid-root program: its effective uid must stay ours
    probe = subprocess.run([setuid_files[0], "--help"], capture_output=True, text=True)
    found["setuid_program"] = setuid_files[0]

# The Docker socket is not there.
found["docker_sock"] = any(os.path.exists(p) for p in ("/var/run/docker.sock", "/run/docker.sock"))

# A fork bomb hits the pids limit.
procs, error = [], None
try:
    for _ in range(5000):
        procs.append(subprocess.Popen(["sleep", "60"]))
except OSError as exc:
    error = "%s" % exc
for proc in procs:
    proc.kill()
    proc.wait()
found["fork_bomb"] = {"started": len(procs), "error": error}

# A memory hog is stopped at the memory limit (the kernel kills the hog, not the whole task).
hog = subprocess.run([sys.executable, "-c", "b = []\nwhile True: b.append(bytearray(16 * 2**20))"],
                     capture_output=True)
found["hog_exit"] = hog.returncode
open("outputs/probe.json", "w").write(json.dumps(found))
print(json.dumps(found))
"""


def test_sandbox_from_inside(pool, docker_worker: WorkerProcess, tmp_path: Path) -> None:
    alice = user(pool)
    task = submit(
        alice,
        bundle(notebook("import os; os.makedirs('outputs', exist_ok=True)", PROBE)),
        memory=384 * MiB,
        timeout=300,
    )
    final = wait_state(alice, task.id, timeout=240)
    assert final.state == pb.SUCCEEDED, (final.error, final.traceback)
    found = json.loads(result_files(alice, task.id, tmp_path)["outputs/probe.json"])

    assert found["network"].startswith("unreachable"), found["network"]
    assert found["dns"].startswith("fails")
    assert found["interfaces"] == ["lo"]
    for path in ("/etc/hivemind-probe", "/usr/hivemind-probe", "/hivemind-probe"):
        assert found[path].startswith("refused"), (path, found[path])
    assert found["lease_readable"] is True
    for path in ("/hivemind/lease/expires", "/hivemind/lease/new"):
        assert found[path].startswith("refused"), (path, found[path])
    assert found["uid"] != 0
    assert int(found["CapEff"], 16) == 0 and int(found["CapBnd"], 16) == 0
    assert found["NoNewPrivs"] == "1"
    assert found["setuid"].startswith("refused")
    assert found["docker_sock"] is False
    assert found["fork_bomb"]["error"] is not None, "5000 processes started: no pids limit"
    assert found["fork_bomb"]["started"] < 600
    assert found["hog_exit"] == -9, "the memory hog was not killed at the limit"
    assert task_containers(task.id) == []
