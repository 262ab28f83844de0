"""Runs one task's notebook and reports everything it produces, as it appears, as JSON lines.

This file runs INSIDE the task's container (bind-mounted read-only) or, for the local executor, in
the task's venv. It needs only the standard library, papermill and nbclient, and must not import
HiveMind: it is the one piece of HiveMind the task's environment sees.

    python runner.py REQUEST_JSON

The request names the notebook (relative to the working folder), the parameters, the variables to
read back and the output folder. Events go to the process's original standard output, one JSON
object per line; anything else that writes to file descriptor 1 afterwards is sent to standard error
so it cannot corrupt them:

    {"t": "progress", "done": 0, "total": 3}
    {"t": "stdout", "text": "..."}            {"t": "stderr", "text": "..."}
    {"t": "display", "output": {...}}          a Jupyter output: display_data, execute_result, error
    {"t": "end", "status": "ok" | "error" | "kernel_died" | "runner_error" | "lease_lapsed",
     "error": "...", "traceback": "...", "metrics": {"cpu_seconds": ..., "peak_memory_bytes": ...}}

Files written to the output folder: executed.ipynb (also after an error), variables.json. The
notebook is saved after every cell, while a cell runs at most every few seconds as its outputs
arrive, and on SIGTERM (how the worker stops a task on cancel or timeout, before it kills it), always
by an atomic rename: a stopped task's last saved copy is whole and shows how far it got. Its
metadata says so: {"hivemind": {"cells_done": N, "cells_total": M, "finished": false}} until the
run ends.

When the request names a lease file, the run is bound to the worker's lease: the worker rewrites the
file with the lease's end (wall-clock seconds) while the pool hears from it, and a thread here stops
everything the moment that time passes, because the pool may then rerun the task elsewhere. It
kills the kernel and whatever it started, reports "lease_lapsed", and exits with LEASE_EXIT; in a
container that ends the container, and everything left in it, too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import sys
import threading
import time
import traceback
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
MAX_VARIABLE_BYTES = 64 * 1024 * 1024
LEASE_POLL = 0.2  # seconds between looks at the lease file
LEASE_EXIT = 75  # the exit status after a lapsed lease (EX_TEMPFAIL: the task runs again elsewhere)

# Run in the kernel after the notebook to read the requested variables. It writes the file itself so
# big values never travel through the kernel's output messages.
_PULL_CODE = """
def __hivemind_pull(names, path, limit):
    import base64, json, pickle
    found = {}
    space = globals()
    for name in names:
        if name not in space:
            found[name] = {"error": "name %r is not defined" % name}
            continue
        value = space[name]
        entry = {"type": type(value).__module__ + "." + type(value).__qualname__}
        try:
            data = pickle.dumps(value, protocol=4)
            if len(data) > limit:
                entry["error"] = "%d bytes pickled; the limit is %d" % (len(data), limit)
            else:
                entry["pickle"] = base64.b64encode(data).decode("ascii")
        except Exception as exc:
            entry["error"] = "cannot pickle: %s: %s" % (type(exc).__name__, exc)
        try:
            text = json.dumps(value, allow_nan=False)
            if len(text) <= limit:
                entry["json"] = json.loads(text)
        except Exception:
            pass
        found[name] = entry
    with open(path, "w") as handle:
        json.dump(found, handle)
"""


class Emitter:
    """Writes events as JSON lines to a private copy of the original standard output."""

    def __init__(self) -> None:
        self._out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
        os.dup2(2, 1)  # from now on stray writes to fd 1 (the kernel's, C libraries') go to stderr
        sys.stdout = sys.stderr
        self._lock = threading.Lock()  # the lease watch may emit beside the main thread

    def emit(self, kind: str, **fields: Any) -> None:
        fields["t"] = kind
        line = json.dumps(fields, default=str) + "\n"
        with self._lock:
            self._out.write(line)
            self._out.flush()


def _children() -> dict[int, list[int]]:
    """Every process's children, from /proc (empty where there is no /proc)."""
    found: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
            parent = int(stat.rsplit(")", 1)[1].split()[1])  # the name, in (), may hold spaces
        except (OSError, ValueError, IndexError):
            continue
        found.setdefault(parent, []).append(int(entry))
    return found


def kill_descendants(root: int, group: int | None = None) -> None:
    """SIGKILL every descendant of `root`, and the process group `group` (the kernel starts its
    own session, so its group holds what it started even once a parent in between has gone)."""
    for _ in range(2):  # a second pass catches what forked while the first one ran
        if group:
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGKILL)
        children = _children()
        todo, seen = [root], set()
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in seen:
                    seen.add(child)
                    todo.append(child)
        for pid in seen:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


class LeaseWatch:
    """Stops the run when the worker's lease lapses (see the module's docstring)."""

    def __init__(self, path: str, emitter: Emitter) -> None:
        self.path = path
        self.emitter = emitter
        self.client: Any = None  # the notebook client, once it exists: its kernel is stopped
        self.expires = self._read() or 0.0  # unreadable at the start: lapsed
        self._thread = threading.Thread(target=self._watch, name="lease", daemon=True)
        self._ending = threading.Lock()  # the run's own end and a lapse: only the first one counts
        self._ended = False

    def start(self) -> None:
        self._thread.start()

    def _read(self) -> float | None:
        try:
            with open(self.path) as handle:
                return float(handle.read().strip())
        except (OSError, ValueError):
            return None  # the worker replaces it whole, so this is rare: keep the last end

    def _watch(self) -> None:
        while True:
            found = self._read()
            if found is not None:
                self.expires = found
            if time.time() >= self.expires:
                self.lapse()
                return
            time.sleep(LEASE_POLL)

    def _kernel_group(self) -> int | None:
        km = getattr(self.client, "km", None)
        process = getattr(getattr(km, "provisioner", None), "process", None)
        pid = getattr(process, "pid", None)
        return pid if isinstance(pid, int) else None

    def finish(self) -> None:
        """The run ended by itself: its own end event stands (waits for a lapse under way)."""
        with self._ending:
            self._ended = True

    def lapse(self) -> None:
        """Kill the kernel and all it started, say why, and leave."""
        with self._ending:
            if self._ended:
                return
            self._lapse()

    def _lapse(self) -> None:
        kill_descendants(os.getpid(), self._kernel_group())
        late = time.time() - self.expires
        error = (
            "this task was stopped because its worker lost its lease: the pool had not answered "
            f"the worker since the lease ended ({late:.1f} s ago), so it may run the task elsewhere"
        )
        # Say so on a thread of its own: a frozen worker may not read the pipe.
        said = threading.Thread(target=self._say, args=(error,), name="lease-end", daemon=True)
        said.start()
        said.join(timeout=1.0)
        os._exit(LEASE_EXIT)

    def _say(self, error: str) -> None:
        with contextlib.suppress(Exception):  # the worker is gone: nobody to tell
            self.emitter.emit("end", status="lease_lapsed", error=error, traceback="", metrics={})


class NotebookSaver:
    """Saves the notebook being executed to out_dir/executed.ipynb, atomically, so a copy that a
    kill interrupts is never half written. After a cell it saves unless the last save was very
    recent compared with what saving costs (ten times its duration); while a cell runs, at most
    every SAVE_EVERY seconds. A notebook with big outputs thus never spends most of its time
    rewriting itself."""

    SAVE_EVERY = 2.0

    def __init__(self, nb: Any, out_dir: str, total: int) -> None:
        self.nb = nb
        self.path = os.path.join(out_dir, "executed.ipynb")
        self.total = total
        self.done = 0
        self._last = 0.0
        self._cost = 0.0

    def save(self, finished: bool = False, suffix: str = ".partial") -> None:
        import nbformat

        began = time.monotonic()
        self.nb.metadata["hivemind"] = {
            "cells_done": self.done,
            "cells_total": self.total,
            "finished": finished,
        }
        partial = self.path + suffix
        with open(partial, "w", encoding="utf-8") as handle:
            nbformat.write(self.nb, handle)
        os.replace(partial, self.path)
        self._last = time.monotonic()
        self._cost = self._last - began

    def _try_save(self) -> None:
        try:
            self.save()
        except Exception as exc:  # a failed save must not stop the run
            print(f"hivemind: could not save the notebook so far: {exc}", file=sys.stderr)

    def on_sigterm(self, signum: int, frame: Any) -> None:
        """The worker stops the task (cancel, timeout) with SIGTERM and a short grace before
        SIGKILL: save what ran so far, outputs of the running cell included, and leave. Python runs
        this between bytecodes, so the notebook is in a consistent state; a save this interrupted
        used another temporary name."""
        try:
            self.save(suffix=".stopped")
        finally:
            os._exit(128 + signum)

    def cell_done(self, done: int) -> None:
        self.done = done
        if time.monotonic() - self._last >= 10 * self._cost:
            self._try_save()

    def output_arrived(self) -> None:
        if time.monotonic() - self._last >= max(self.SAVE_EVERY, 10 * self._cost):
            self._try_save()


def _metrics(started: float) -> dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    peak = max(own.ru_maxrss, kids.ru_maxrss) * 1024  # Linux reports KiB
    for path in ("/sys/fs/cgroup/memory/memory.max_usage_in_bytes", "/sys/fs/cgroup/memory.peak"):
        try:
            with open(path) as handle:
                peak = max(peak, int(handle.read().strip()))
            break
        except (OSError, ValueError):
            continue
    return {
        "cpu_seconds": round(cpu, 3),
        "peak_memory_bytes": int(peak),
        "runner_seconds": round(time.monotonic() - started, 3),
    }


def _make_client(
    nb: Any, emitter: Emitter, cwd: str, kernel_name: str, saver: NotebookSaver | None = None
) -> Any:
    from nbclient import NotebookClient

    class StreamingClient(NotebookClient):
        """Emits each output the moment the kernel produces it."""

        quiet = False

        def output(
            self, outs: list[Any], msg: dict[str, Any], display_id: str | None, cell_index: int
        ) -> Any:
            out = super().output(outs, msg, display_id, cell_index)
            if out is None or self.quiet:
                return out
            if out.get("output_type") == "stream":
                name = out.get("name", "stdout")
                emitter.emit(
                    "stderr" if name == "stderr" else "stdout", text=out.get("text", ""), cell=cell_index
                )
            else:
                emitter.emit("display", output=out, cell=cell_index)
            if saver is not None:
                saver.output_arrived()
            return out

    return StreamingClient(
        nb,
        timeout=None,
        kernel_name=kernel_name,
        allow_errors=False,
        record_timing=True,
        startup_timeout=120,
        resources={"metadata": {"path": cwd}},
    )


def run(request: dict[str, Any], emitter: Emitter, lease: LeaseWatch | None = None) -> dict[str, Any]:
    """Execute the notebook; the 'end' event's fields."""
    import nbformat
    from nbclient.exceptions import CellExecutionError, DeadKernelError
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    started = time.monotonic()
    cwd = request.get("cwd") or os.getcwd()
    out_dir = request["out_dir"]
    kernel_name = request.get("kernel") or "python3"
    os.chdir(cwd)
    nb = load_notebook_node(request["notebook"])  # also gives every cell the metadata papermill expects
    parameters = request.get("parameters") or {}
    if parameters:
        nb = parameterize_notebook(nb, parameters, kernel_name=kernel_name, language="python")
    code_cells = [index for index, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    emitter.emit("progress", done=0, total=len(code_cells))
    saver = NotebookSaver(nb, out_dir, len(code_cells))
    saver.save()  # a task killed before its first cell ends still returns its notebook
    signal.signal(signal.SIGTERM, saver.on_sigterm)
    client = _make_client(nb, emitter, cwd, kernel_name, saver)
    if lease is not None:
        lease.client = client
    result: dict[str, Any] = {"status": "ok", "error": "", "traceback": ""}
    try:
        with client.setup_kernel():
            for done, index in enumerate(code_cells, start=1):
                try:
                    client.execute_cell(nb.cells[index], index)
                except CellExecutionError as exc:
                    result.update(
                        status="error",
                        error=f"{exc.ename}: {exc.evalue}".strip(": "),
                        traceback=_ANSI.sub("", exc.traceback or str(exc)),
                        cell=index,
                    )
                    break
                finally:
                    saver.cell_done(done)
                    emitter.emit("progress", done=done, total=len(code_cells))
            names = request.get("pull_variables") or []
            if names and result["status"] == "ok":
                client.quiet = True
                wanted = [str(name) for name in names if str(name).isidentifier()]
                target = os.path.join(out_dir, "variables.json")
                code = (
                    _PULL_CODE + f"__hivemind_pull({wanted!r}, {target!r}, {MAX_VARIABLE_BYTES})\n"
                    "del __hivemind_pull\n"
                )
                pull = nbformat.v4.new_code_cell(code)
                nb.cells.append(pull)  # nbclient stores the cell by index; removed again below
                try:
                    client.execute_cell(pull, len(nb.cells) - 1)
                except CellExecutionError as exc:
                    result.update(
                        status="error",
                        error=f"reading back variables failed: {exc.evalue}",
                        traceback=_ANSI.sub("", exc.traceback or ""),
                    )
                finally:
                    nb.cells.pop()
    except DeadKernelError as exc:
        result.update(status="kernel_died", error=f"the kernel died: {exc}")
    finally:
        saver.save(finished=True)
    result["metrics"] = _metrics(started)
    return result


def main(argv: list[str]) -> int:
    emitter = Emitter()
    started = time.monotonic()
    lease: LeaseWatch | None = None
    try:
        with open(argv[1]) as handle:
            request = json.load(handle)
        if request.get("lease_file"):
            lease = LeaseWatch(str(request["lease_file"]), emitter)
            lease.start()
        result = run(request, emitter, lease)
    except Exception as exc:  # report anything, never die silently
        result = {
            "status": "runner_error",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
            "metrics": _metrics(started),
        }
    if lease is not None:
        lease.finish()
    emitter.emit("end", **result)
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
