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
    {"t": "end", "status": "ok" | "error" | "kernel_died" | "runner_error",
     "error": "...", "traceback": "...", "metrics": {"cpu_seconds": ..., "peak_memory_bytes": ...}}

Files written to the output folder: executed.ipynb (also after an error), variables.json. The
notebook is saved after every cell, while a cell runs at most every few seconds as its outputs
arrive, and on SIGTERM (how the worker stops a task on cancel or timeout, before it kills it), always
by an atomic rename: a stopped task's last saved copy is whole and shows how far it got. Its
metadata says so: {"hivemind": {"cells_done": N, "cells_total": M, "finished": false}} until the
run ends.

A notebook ends as plain papermill ends it: `sys.exit()` or `sys.exit(0)` in a cell stops it there
and it succeeded; any other SystemExit fails it like an exception; a dead kernel fails it as
`DeadKernelError` (tests/worker/test_papermill_parity.py compares the two over a corpus).
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import sys
import time
import traceback
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
MAX_VARIABLE_BYTES = 64 * 1024 * 1024

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

    def emit(self, kind: str, **fields: Any) -> None:
        fields["t"] = kind
        self._out.write(json.dumps(fields, default=str) + "\n")
        self._out.flush()


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


def _clean_exit(exc: Any) -> bool:
    """`sys.exit()` or `sys.exit(0)` in a cell: papermill stops there and counts the run a success
    (any other SystemExit, like every other error, fails it)."""
    return exc.ename == "SystemExit" and str(exc.evalue) in ("", "0")


def run(request: dict[str, Any], emitter: Emitter) -> dict[str, Any]:
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
    result: dict[str, Any] = {"status": "ok", "error": "", "traceback": ""}
    try:
        with client.setup_kernel():
            for done, index in enumerate(code_cells, start=1):
                try:
                    client.execute_cell(nb.cells[index], index)
                except CellExecutionError as exc:
                    if _clean_exit(exc):
                        break  # as papermill: the notebook ends here, successfully
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
        # Named as papermill's caller sees it: the error line reads `DeadKernelError: ...`.
        result.update(status="kernel_died", error=f"DeadKernelError: the kernel died ({exc})")
    finally:
        saver.save(finished=True)
    result["metrics"] = _metrics(started)
    return result


def main(argv: list[str]) -> int:
    emitter = Emitter()
    started = time.monotonic()
    try:
        with open(argv[1]) as handle:
            request = json.load(handle)
        result = run(request, emitter)
    except Exception as exc:  # report anything, never die silently
        result = {
            "status": "runner_error",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
            "metrics": _metrics(started),
        }
    emitter.emit("end", **result)
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
