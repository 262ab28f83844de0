"""Runs one task's notebook and reports everything it produces, as it appears, as JSON lines.

This file runs INSIDE the task's container (bind-mounted read-only) or, for the local executor, in
the task's venv. It needs only the standard library, papermill and nbclient, and must not import
HiveMind: it is the one piece of HiveMind the task's environment sees.

    python runner.py REQUEST_JSON

The request names the notebook (relative to the working folder), the parameters, the variables to
read back and the output folder. Events go to the process's original standard output, one JSON
object per line; anything else that writes to file descriptor 1 afterwards is sent to standard error
so it cannot corrupt them:

    {"t": "phase", "name": "kernel" | "running"}   starting the kernel; the first cell is next
    {"t": "progress", "done": 0, "total": 3}   the user's cells only (see _counted)
    {"t": "stdout", "text": "..."}            {"t": "stderr", "text": "..."}
    {"t": "display", "output": {...}}          a Jupyter output: display_data, execute_result, error
    {"t": "notice", "text": "..."}             HiveMind telling the user something about the run
    {"t": "end", "status": "ok" | "error" | "kernel_died" | "runner_error" | "lease_lapsed",
     "error": "...", "traceback": "...", "metrics": {"cpu_seconds": ..., "peak_memory_bytes": ...}}

Files written to the output folder: executed.ipynb (also after an error), variables.json (the
pulled variables in forms that cannot run code where they are read; see _PULL_CODE). The
notebook is saved after every cell, while a cell runs at most every few seconds as its outputs
arrive, and on SIGTERM (how the worker stops a task on cancel or timeout, before it kills it), always
by an atomic rename: a stopped task's last saved copy is whole and shows how far it got. Its
metadata says so: {"hivemind": {"cells_done": N, "cells_total": M, "finished": false}} until the
run ends.

Every line a task prints is kept in the executed notebook, or the cell says where and why some were
not. Lines used to be lost silently in two places, both fixed here:
- nbclient waits only `iopub_timeout` (4 s by default) after a cell's reply for the rest of its
  output, then moves on without it. A task that prints faster than the worker reads the events made
  this runner fall behind the kernel by more than that, and the cell's last outputs were dropped
  (74,561 of 104,857 lines kept in one 100 MB run). Now events are written by a thread of their own
  (`Emitter`), so a slow reader never stalls the loop that collects the kernel's output; the wait is
  IOPUB_DRAIN_SECONDS; and if it still runs out, the cell gets a note saying its last outputs may
  be missing.
- The kernel publishes output on a ZeroMQ socket that drops messages past 1000 queued (its high
  water mark) when this runner reads slower for a while (saving a big notebook, for example). The
  kernel is started with that limit off (`_KERNEL_LAUNCH`).
What is capped is said: the live stream drops output past LIVE_BUFFER_BYTES waiting to be written
(a notice says how much; the notebook keeps it), and the notebook keeps at most `max_output_chars`
of printed text (the request's, default DEFAULT_KEEP_CHARS), so that its result stays returnable;
past that a note in the cell counts the lines left out.

When the request names a lease file, the run is bound to the worker's lease: the worker rewrites the
file with the lease's end (wall-clock seconds) while the pool hears from it, and a thread here stops
everything the moment that time passes, because the pool may then rerun the task elsewhere. It
kills the kernel and whatever it started, reports "lease_lapsed", and exits with LEASE_EXIT; in a
container that ends the container, and everything left in it, too.

A notebook ends as plain papermill ends it: `sys.exit()` or `sys.exit(0)` in a cell stops it there
and it succeeded; any other SystemExit fails it like an exception; a dead kernel fails it as
`DeadKernelError` (tests/worker/test_papermill_parity.py compares the two over a corpus).
"""

from __future__ import annotations

import collections
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
# Cells that are not the user's, so progress does not count them: papermill's injected parameters,
# and the variables HiveMind pushes into a cell's task (hivemind_jupyter.packaging.TAG_PUSH).
NOT_COUNTED_TAGS = frozenset({"injected-parameters", "hivemind-push"})
MAX_VARIABLE_BYTES = 64 * 1024 * 1024
LIVE_BUFFER_BYTES = 32 * 1024 * 1024  # live output waiting for the worker; past it, dropped (said)
LIVE_KINDS = ("stdout", "stderr", "display")
EVENT_TEXT_CHARS = 64 * 1024  # one stdout/stderr event; longer text goes as several
DEFAULT_KEEP_CHARS = 256 * 1024 * 1024  # printed text one executed notebook keeps
IOPUB_DRAIN_SECONDS = 600  # after a cell's reply, how long its remaining output may take to arrive
MIB = 1024 * 1024

# The kernel's command line, instead of `-m ipykernel_launcher`: the same launcher, with no limit
# on the messages its output sockets queue for a slow reader (ZeroMQ's default drops past 1000).
# The limit must be set before the socket is bound, hence here rather than in a startup file.
_KERNEL_LAUNCH = """
import sys
import zmq
_socket = zmq.Context.socket
def _unbounded(self, kind, *args, **kwargs):
    sock = _socket(self, kind, *args, **kwargs)
    if kind in (zmq.PUB, zmq.XPUB):
        sock.setsockopt(zmq.SNDHWM, 0)
    return sock
zmq.Context.socket = _unbounded
if sys.path and sys.path[0] in ("", "."):
    del sys.path[0]
from ipykernel import kernelapp
kernelapp.launch_new_instance()
"""
LEASE_POLL = 0.2  # seconds between looks at the lease file
LEASE_EXIT = 75  # the exit status after a lapsed lease (EX_TEMPFAIL: the task runs again elsewhere)

# Run in the kernel after the notebook to read the requested variables. It writes the file itself so
# big values never travel through the kernel's output messages. Each value travels in a form that
# cannot run code where it is read (the worker may belong to someone else): JSON when it round-trips
# exactly, bytes, numpy arrays and scalars as .npy (read with allow_pickle=False), pandas frames
# and series as Parquet (needs pyarrow in the task's environment). Only a value with none of those
# forms also travels pickled, which the user's side loads only from a pool the user trusts.
_PULL_CODE = """
def __hivemind_pull(names, path, limit):
    import base64, io, json, math, pickle, sys

    def b64(data):
        return base64.b64encode(data).decode("ascii")

    def safe_form(value):
        kind = type(value)
        module = kind.__module__
        if module == "numpy" or module.startswith("numpy."):
            import numpy
            if isinstance(value, (numpy.ndarray, numpy.generic)):
                buffer = io.BytesIO()
                try:
                    numpy.save(buffer, numpy.asarray(value), allow_pickle=False)
                except ValueError:
                    return None, "a numpy array of Python objects has no safe form (only pickle)"
                entry = {"npy": b64(buffer.getvalue())}
                if isinstance(value, numpy.generic):
                    entry["scalar"] = True
                return entry, ""
        if module.startswith("pandas") and kind.__name__ in ("DataFrame", "Series"):
            frame = value.to_frame(name="__hivemind_series__") if kind.__name__ == "Series" else value
            buffer = io.BytesIO()
            try:
                frame.to_parquet(buffer, engine="pyarrow")
            except ImportError:
                return None, (
                    "a pandas %s comes back as Parquet, which needs pyarrow in the task's "
                    "environment (add pyarrow to its requirements.txt)" % kind.__name__
                )
            except Exception as exc:
                return None, "cannot be written as Parquet: %s: %s" % (type(exc).__name__, exc)
            entry = {"parquet": b64(buffer.getvalue())}
            if kind.__name__ == "Series":
                entry["series"] = True
                try:
                    json.dumps(value.name)
                    entry["series_name"] = value.name
                except (TypeError, ValueError):
                    pass
            return entry, ""
        if kind in (bytes, bytearray):
            return {"bytes": b64(bytes(value)), "bytearray": kind is bytearray}, ""
        if kind is float and not math.isfinite(value):
            return {"float": repr(value)}, ""
        try:
            text = json.dumps(value, allow_nan=False)
            if json.loads(text) == value:  # exact: no tuple turned list, no int key turned str
                return {"json": json.loads(text)}, ""
        except (TypeError, ValueError, RecursionError):
            pass
        return None, ""

    found = {}
    space = globals()
    for name in names:
        if name not in space:
            found[name] = {"error": "name %r is not defined" % name}
            continue
        value = space[name]
        entry = {"type": type(value).__module__ + "." + type(value).__qualname__}
        try:
            form, why = safe_form(value)
        except Exception as exc:
            form, why = None, "%s: %s" % (type(exc).__name__, exc)
        if form is not None:
            size = len(json.dumps(form))
            if size > limit:
                entry["error"] = "%d bytes; the limit is %d" % (size, limit)
            else:
                entry.update(form)
            found[name] = entry
            continue
        if why:
            entry["safe_error"] = why
        try:
            data = pickle.dumps(value, protocol=4)
            if len(data) > limit:
                entry["error"] = "%d bytes pickled; the limit is %d" % (len(data), limit)
            else:
                entry["pickle"] = b64(data)
        except Exception as exc:
            entry["error"] = "cannot pickle: %s: %s" % (type(exc).__name__, exc)
        found[name] = entry
    with open(path, "w") as handle:
        json.dump(found, handle)
"""


class Emitter:
    """Writes events as JSON lines to a private copy of the original standard output.

    A thread of its own writes them, so a reader that is slower than the task never stalls the
    caller (nbclient's loop, which must keep collecting the kernel's output). Live output (stdout,
    stderr, display) waiting to be written is capped at `live_buffer` bytes: past it, it is left
    out of the live stream and one notice says how much; the executed notebook still has it.
    Progress, notices and the end are never dropped."""

    def __init__(self, live_buffer: int = LIVE_BUFFER_BYTES) -> None:
        self._out = os.fdopen(os.dup(1), "wb")
        os.dup2(2, 1)  # from now on stray writes to fd 1 (the kernel's, C libraries') go to stderr
        sys.stdout = sys.stderr
        self.live_buffer = live_buffer
        self._lock = threading.Condition()
        self._lines: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._dropped = 0
        self.dropped_total = 0
        self._closed = False
        self._thread = threading.Thread(target=self._write, name="hivemind-events", daemon=True)
        self._thread.start()

    @staticmethod
    def _line(kind: str, fields: dict[str, Any]) -> bytes:
        fields["t"] = kind
        return (json.dumps(fields, default=str) + "\n").encode("ascii")

    def emit(self, kind: str, **fields: Any) -> None:
        line = self._line(kind, fields)
        with self._lock:
            if kind in LIVE_KINDS and self._queued + len(line) > self.live_buffer:
                self._dropped += len(line)
                self.dropped_total += len(line)
                return
            self._say_dropped()
            self._lines.append(line)
            self._queued += len(line)
            self._lock.notify_all()

    def _say_dropped(self) -> None:
        """Queue the notice for live output dropped since the last one (lock held)."""
        if not self._dropped:
            return
        text = (
            f"{self._dropped / MIB:.1f} MiB of live output were not streamed: the task printed faster "
            "than the worker could take it. The executed notebook has all of it."
        )
        self._dropped = 0
        line = self._line("notice", {"text": text})
        self._lines.append(line)
        self._queued += len(line)

    def _write(self) -> None:
        while True:
            with self._lock:
                while not self._lines and not self._closed:
                    self._lock.wait()
                if not self._lines:
                    return
                batch = b"".join(self._lines)
                self._lines.clear()
            try:
                self._out.write(batch)
                self._out.flush()
            except OSError:  # the reader is gone: nothing more can be delivered
                with self._lock:
                    self._closed = True
                    self._lines.clear()
                    self._queued = 0
                return
            with self._lock:
                self._queued -= len(batch)

    def close(self, timeout: float = IOPUB_DRAIN_SECONDS) -> None:
        """Deliver what is queued (a last drop notice included) and stop the writer."""
        with self._lock:
            self._say_dropped()
            self._closed = True
            self._lock.notify_all()
        self._thread.join(timeout)


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
            self.emitter.close(timeout=0.9)  # events go out on the writer thread: let it deliver


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


def _kernel_manager_class() -> type:
    from jupyter_client.manager import AsyncKernelManager

    class UnboundedKernelManager(AsyncKernelManager):
        """Starts ipykernel through `_KERNEL_LAUNCH`; any other kernel as its spec says."""

        def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
            cmd: list[str] = super().format_kernel_cmd(extra_arguments)
            for at in range(len(cmd) - 1):
                if cmd[at] == "-m" and cmd[at + 1] == "ipykernel_launcher":
                    return [*cmd[:at], "-c", _KERNEL_LAUNCH, *cmd[at + 2 :]]
            return cmd

    return UnboundedKernelManager


class OutputKeeper:
    """Keeps at most `limit` characters of printed text in the notebook. Past it, a cell's further
    stream text is left out, and one note in that cell, where the leaving out began, counts what
    was (updated as more is); a notice tells the live stream once per cell."""

    def __init__(self, limit: int, emitter: Emitter) -> None:
        self.limit = limit
        self.emitter = emitter
        self.kept = 0
        self._notes: dict[int, tuple[Any, list[int]]] = {}  # cell -> (note output, [chars, lines])

    def admit(self, text: str, outs: list[Any], cell_index: int) -> str:
        """The part of `text` the notebook keeps ('' for none); records the rest."""
        room = self.limit - self.kept
        if len(text) <= room:
            self.kept += len(text)
            return text
        keep = text[: text.rfind("\n", 0, max(room, 0)) + 1] if room > 0 else ""
        self.kept += len(keep)
        self._left_out(text[len(keep) :], outs, cell_index)
        return keep

    def _left_out(self, text: str, outs: list[Any], cell_index: int) -> None:
        import nbformat

        note, counts = self._notes.get(cell_index, (None, [0, 0]))
        counts[0] += len(text)
        counts[1] += text.count("\n")
        if note is None or not any(out is note for out in outs):  # new, or cleared by the cell
            note = nbformat.v4.new_output("stream", name="stderr", text="")
            outs.append(note)
            if cell_index not in self._notes:
                self.emitter.emit(
                    "notice",
                    text=f"cell {cell_index + 1} printed more than this notebook keeps "
                    f"({self.limit / MIB:.0f} MiB of printed text); its note in the executed notebook "
                    "says how much was left out",
                )
        self._notes[cell_index] = (note, counts)
        note["text"] = (
            f"[hivemind] {counts[1]:,} lines ({counts[0] / MIB:.1f} MiB) of this cell's printed output "
            f"were left out of the executed notebook from here on: it keeps at most "
            f"{self.limit / MIB:.0f} MiB of printed text, so that the result stays within the "
            "worker's result limit. Write large output to a file under outputs/ instead.\n"
        )


def _streaming_client_class() -> type:
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionComplete

    class StreamingClient(NotebookClient):
        """Emits each output the moment the kernel produces it; keeps in the notebook what its
        keeper allows; notes whether the running cell's outputs all arrived (the kernel went idle)."""

        quiet = False
        idle_seen = False
        emitter: Emitter
        saver: NotebookSaver | None = None
        keeper: OutputKeeper | None = None

        def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
            try:
                return super().process_message(msg, cell, cell_index)
            except CellExecutionComplete:
                self.idle_seen = True
                raise

        def output(
            self, outs: list[Any], msg: dict[str, Any], display_id: str | None, cell_index: int
        ) -> Any:
            hooked = bool(self.output_hook_stack[msg["parent_header"].get("msg_id")])
            if msg["msg_type"] == "stream" and not hooked:
                out = self._stream(outs, msg, display_id, cell_index)
            else:
                out = super().output(outs, msg, display_id, cell_index)
                if out is not None and not self.quiet:
                    self.emitter.emit("display", output=out, cell=cell_index)
            if self.saver is not None:
                self.saver.output_arrived()
            return out

        def _stream(
            self, outs: list[Any], msg: dict[str, Any], display_id: str | None, cell_index: int
        ) -> Any:
            content = msg.get("content") or {}
            text = str(content.get("text", ""))
            if not self.quiet:
                kind = "stderr" if content.get("name") == "stderr" else "stdout"
                for start in range(0, len(text), EVENT_TEXT_CHARS):
                    self.emitter.emit(kind, text=text[start : start + EVENT_TEXT_CHARS], cell=cell_index)
            kept = self.keeper.admit(text, outs, cell_index) if self.keeper is not None else text
            if not kept:
                return None
            if kept is not text:
                msg = {**msg, "content": {**content, "text": kept}}
            return super().output(outs, msg, display_id, cell_index)

    return StreamingClient


def _make_client(
    nb: Any,
    emitter: Emitter,
    cwd: str,
    kernel_name: str,
    *,
    saver: NotebookSaver | None = None,
    keeper: OutputKeeper | None = None,
) -> Any:
    client = _streaming_client_class()(
        nb,
        timeout=None,
        kernel_name=kernel_name,
        kernel_manager_class=_kernel_manager_class(),
        allow_errors=False,
        record_timing=True,
        startup_timeout=120,
        iopub_timeout=IOPUB_DRAIN_SECONDS,
        resources={"metadata": {"path": cwd}},
    )
    client.emitter, client.saver, client.keeper = emitter, saver, keeper
    return client


def _note_missing_output(cell: Any) -> None:
    """The cell's outputs did not all arrive in time after its reply: say so in the cell."""
    import nbformat

    cell.outputs.append(
        nbformat.v4.new_output(
            "stream",
            name="stderr",
            text=f"[hivemind] the end of this cell's output did not arrive within {IOPUB_DRAIN_SECONDS} s "
            "after the cell finished; some of its last output may be missing here.\n",
        )
    )


def _clean_exit(exc: Any) -> bool:
    """`sys.exit()` or `sys.exit(0)` in a cell: papermill stops there and counts the run a success
    (any other SystemExit, like every other error, fails it)."""
    return exc.ename == "SystemExit" and str(exc.evalue) in ("", "0")


def _counted(cell: Any, generated: bool) -> bool:
    """Whether progress counts this code cell: the user's own cells only. In a notebook HiveMind
    generated from a `%%hivemind` cell, the `parameters` cell holds HiveMind's defaults too."""
    tags = set((cell.get("metadata") or {}).get("tags") or [])
    if tags & NOT_COUNTED_TAGS:
        return False
    return not (generated and "parameters" in tags)


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
    generated = bool((nb.metadata.get("hivemind") or {}).get("generated"))
    counted = {index for index in code_cells if _counted(nb.cells[index], generated)}
    total = len(counted)
    emitter.emit("progress", done=0, total=total)
    saver = NotebookSaver(nb, out_dir, total)
    saver.save()  # a task killed before its first cell ends still returns its notebook
    signal.signal(signal.SIGTERM, saver.on_sigterm)
    keeper = OutputKeeper(int(request.get("max_output_chars") or DEFAULT_KEEP_CHARS), emitter)
    client = _make_client(nb, emitter, cwd, kernel_name, saver=saver, keeper=keeper)
    if lease is not None:
        lease.client = client
    result: dict[str, Any] = {"status": "ok", "error": "", "traceback": ""}
    done = 0
    try:
        emitter.emit("phase", name="kernel")
        with client.setup_kernel():
            emitter.emit("phase", name="running")
            for index in code_cells:
                client.idle_seen = False
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
                    if not client.idle_seen:
                        _note_missing_output(nb.cells[index])
                        emitter.emit("notice", text=f"cell {index + 1}: the end of its output did not arrive")
                    if index in counted:
                        done += 1
                        emitter.emit("progress", done=done, total=total)
                    saver.cell_done(done)
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
    lease: LeaseWatch | None = None
    try:
        with open(argv[1]) as handle:
            request = json.load(handle)
        emitter.live_buffer = int(request.get("live_buffer_bytes") or LIVE_BUFFER_BYTES)
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
    emitter.close()
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
