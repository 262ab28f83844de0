"""One attempt of one task, from assignment to uploaded result, on its own thread.

PREPARING (fetch the bundle, cached by sha256; unpack it safely into a fresh folder on the task's
size-limited disk; get the environment) -> RUNNING (the executor streams events; a watch stops the
task past its disk limit) -> UPLOADING (the result ZIP, refused here when it is over the pool's
limit) -> the outcome. Within those states, PHASE events say what happens at the moment
(hivemind_nodepool.protocol.phases): fetching, environment (with requirements only), container
(from the executor), kernel and running (from the runner in the sandbox), uploading.
Every report carries the attempt's fencing number; when the pool refuses one, this attempt is stale
and stops at once without reporting an outcome.

The run is bound to the worker's lease (lease.py): when it lapses, the runner stops the notebook by
itself, or the daemon stops it here, and the attempt hands the task back (requeue) without spending
a retry. When the pool has rerun the task elsewhere meanwhile, it refuses that report.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hivemind_nodepool.client import PoolClient
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol import phases
from hivemind_nodepool.protocol.bundle import BundleLimits, safe_extract
from hivemind_nodepool.protocol.errors import (
    BundleError,
    Conflict,
    DiskFull,
    HiveMindError,
    NotFound,
    PoolUnavailable,
    ResultRefused,
)

from .build_deadline import BUILD_TIMEOUT_KIND, build_deadline
from .bundles import BundleCache
from .disk import AUTO, DiskExceeded, DiskWatch, TaskDisk, exceeded_message, human, is_space_error
from .environment_request import requested_environment
from .errors import BuildStopped, EnvironmentBuildError, Fenced, NoTaskNetwork, WorkerError
from .events import EnvironmentReport, EventStream
from .executors.base import Executor, Outcome, RunOutcome, RunSpec, Stopper
from .lease import Lease
from .results import DEFAULT_OUTPUTS, build_result, read_regular

log = logging.getLogger(__name__)

UPLOAD_RETRY_FOR = 600.0
DISK_FULL_BACKOFF = 30.0  # the longest wait between uploads while the pool's disk is full
PROGRESS_REPORT_INTERVAL = 1.0
CANCEL = "cancel"
REQUEUE = "requeue"
DISK = "disk"  # the stopper's kind when the disk watch stopped the task
LEASE = "lease"  # the worker's lease lapsed: handed back, as REQUEUE
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass
class AttemptConfig:
    max_output_bytes: int = 16 * 1024**2
    max_result_bytes: int = 1024**3
    default_timeout: float = 6 * 3600.0
    default_memory: int = 2 * 1024**3
    keep_folders: bool = False
    limits: BundleLimits = field(default_factory=BundleLimits)
    task_disk: int = 20 * 1024**3  # the most one task may use; a task may ask for less
    disk_mode: str = AUTO  # how the limit is held: auto, mount or monitor (see disk.py)
    pool_max_result_bytes: int = 0  # the pool's result limit, from its Welcome (0: not known)


def notebook_output_chars(max_result_bytes: int) -> int:
    """Printed text an executed notebook keeps: a quarter of the result limit (a character may
    take up to four bytes in the notebook's JSON), and never more than 256 MiB, which the runner
    must hold in memory."""
    return max(1024 * 1024, min(256 * 1024**2, max_result_bytes // 4))


def container_name(task_id: str, attempt: int) -> str:
    """A Docker-safe, unique name for an attempt's sandbox."""
    ident = task_id if _SAFE_ID.match(task_id) else hashlib.sha256(task_id.encode()).hexdigest()[:32]
    return f"hivemind-{ident}-{attempt}"


def unpack(bundle: Path, folder: Path, limits: BundleLimits) -> int:
    """Unpack a bundle into a fresh folder with the shared safe unpacker; on refusal the partial
    folder is removed, so nothing of a hostile bundle stays on disk. Returns bytes written."""
    if folder.exists():
        shutil.rmtree(folder)
    try:
        return safe_extract(bundle, folder, limits)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _clean_relative(name: str) -> str:
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts) or name.startswith("/"):
        raise WorkerError(f"the entry notebook {name!r} is not a path inside the bundle")
    return "/".join(parts)


def _parameters(manifest: pb.Manifest) -> dict[str, Any]:
    """The papermill parameters, and a check that the variables to pull back can be names."""
    try:
        parameters = json.loads(manifest.parameters_json or "{}")
    except ValueError as exc:
        raise WorkerError(f"the parameters are not valid JSON: {exc}") from None
    if not isinstance(parameters, dict):
        raise WorkerError("the parameters must be a JSON object")
    bad = [name for name in manifest.pull_variables if not name.isidentifier()]
    if bad:
        raise WorkerError(f"not variable names: {', '.join(map(repr, bad))}")
    return parameters


class Attempt:
    def __init__(
        self,
        assignment: pb.Assignment,
        client: PoolClient,
        executor: Executor,
        *,
        bundles: BundleCache,
        attempts_root: Path,
        config: AttemptConfig,
        on_done: Callable[[Attempt], None] = lambda _: None,
        lease: Lease | None = None,
    ) -> None:
        self.assignment = assignment
        self.task_id = assignment.task_id
        self.number = assignment.attempt
        self.client = client
        self.executor = executor
        self.bundles = bundles
        self.config = config
        self.on_done = on_done
        self.lease = lease
        self._lease_file: Path | None = None
        self.stopper = Stopper()
        self.name = container_name(self.task_id, self.number)
        self.folder = attempts_root / self.name
        self.state: int = pb.ASSIGNED
        self.outcome: pb.ResultHeader | None = None
        self.started_at = time.monotonic()
        self._last_progress_report = 0.0
        self._thread = threading.Thread(target=self._main, name=f"attempt-{self.name}", daemon=True)
        self.events = EventStream(
            client, self.task_id, self.number, config.max_output_bytes, on_fenced=self._fenced
        )
        self.done = threading.Event()

    @property
    def key(self) -> tuple[str, int]:
        return self.task_id, self.number

    def start(self) -> None:
        self._thread.start()

    def cancel(self, reason: str, requeue: bool = False) -> None:
        """Stop the run (kills the sandbox within a poll interval)."""
        default = "handed back" if requeue else "cancelled"
        self.stopper.stop(REQUEUE if requeue else CANCEL, reason or default)

    def lease_lapsed(self, reason: str) -> None:
        """The worker's lease lapsed: stop the run, and hand the task back."""
        self.stopper.stop(LEASE, reason)

    def join(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)

    # -- reporting ------------------------------------------------------------------------------

    def _fenced(self, why: str) -> None:
        self.stopper.stop("fenced", f"the pool gave this task to another attempt ({why})")

    def _status(self, state: int, message: str = "", progress: tuple[int, int] | None = None) -> None:
        self.state = state
        report = pb.StatusReport(
            task_id=self.task_id,
            attempt=self.number,
            state=state,  # type: ignore[arg-type]
            message=message,
        )
        if progress is not None:
            report.progress.cells_done, report.progress.cells_total = progress
        try:
            self.client.report_status(report)
        except (Conflict, NotFound) as exc:
            self._fenced(str(exc))
            raise Fenced(str(exc)) from None
        except HiveMindError as exc:  # the outcome, sent later, carries what matters
            log.warning("status report for %s failed: %s", self.name, exc)

    def _on_runner_event(self, event: dict[str, Any]) -> None:
        kind = event.get("t")
        if kind in ("stdout", "stderr"):
            self.events.add(
                pb.TaskEvent.STDOUT if kind == "stdout" else pb.TaskEvent.STDERR,
                text=str(event.get("text", "")),
            )
        elif kind == "display":
            output = event.get("output")
            if isinstance(output, dict):
                self.events.add(pb.TaskEvent.DISPLAY, data=output)
        elif kind == "notice":
            self.events.notice(str(event.get("text", ""))[:2000])
        elif kind == "phase":  # the executor's, or the runner's (LineParser lets only its own by)
            details = {key: value for key, value in event.items() if key not in ("t", "name")}
            self.events.phase(str(event.get("name", "")), **details)
        elif kind == "progress":
            done, total = int(event.get("done", 0)), int(event.get("total", 0))
            self.events.add(pb.TaskEvent.PROGRESS, progress=(done, total))
            now = time.monotonic()
            if now - self._last_progress_report >= PROGRESS_REPORT_INTERVAL or done == total:
                self._last_progress_report = now
                with contextlib.suppress(Fenced):
                    self._status(pb.RUNNING, progress=(done, total))

    # -- the run --------------------------------------------------------------------------------

    def _main(self) -> None:
        header = pb.ResultHeader(task_id=self.task_id, attempt=self.number)
        result_path: Path | None = None
        try:
            header, result_path = self._run(header)
        except Fenced:
            header = None  # type: ignore[assignment]
        except BundleError as exc:
            header.outcome, header.error = pb.FAILED, f"the bundle was refused: {exc}"
        except (NoTaskNetwork, DiskExceeded) as exc:
            header.outcome, header.error = pb.FAILED, str(exc)
        except EnvironmentBuildError as exc:
            header.outcome, header.error = pb.FAILED, f"the environment could not be built: {exc}"
        except HiveMindError as exc:
            header.outcome, header.error = pb.FAILED, f"worker error: {exc}"
        except Exception as exc:
            log.exception("attempt %s failed", self.name)
            header.outcome, header.error = pb.FAILED, f"worker error: {type(exc).__name__}: {exc}"
        try:
            if header is not None and self.stopper.kind != "fenced":
                if header.error and header.outcome == pb.FAILED and not header.traceback:
                    self.events.add(pb.TaskEvent.NOTICE, text=header.error)
                header.metrics.wall_seconds = time.monotonic() - self.started_at
                self.events.close(timeout=30, wait_for_room=True)  # the result goes after them
                self.outcome = header
                self._upload(header, result_path)
            else:
                self.events.close(timeout=0.5)
        finally:
            if self.lease is not None and self._lease_file is not None:
                self.lease.detach(self._lease_file)
            if not self.config.keep_folders:
                shutil.rmtree(self.folder, ignore_errors=True)
            self.done.set()
            self.on_done(self)

    def _run(self, header: pb.ResultHeader) -> tuple[pb.ResultHeader, Path | None]:
        if self.stopper.stopped:  # handed back before it began (a draining worker)
            return self._stopped(header), None
        if self.assignment.allow_network:
            self.executor.check_network()
        sha256 = self.assignment.bundle_sha256
        self._status(pb.PREPARING, "getting the task ready")
        self.events.phase(phases.FETCHING, bytes=self.assignment.bundle_size, cached=self.bundles.has(sha256))
        bundle = self.bundles.get(sha256, self._download)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, mode=0o700, exist_ok=True)
        disk = TaskDisk(self.folder / "disk", self._disk_limit(), self.config.disk_mode)
        try:
            disk.open()
            return self._run_on(header, bundle, disk)
        finally:
            disk.close(keep=self.config.keep_folders)  # the result ZIP lies beside it, outside

    def _disk_limit(self) -> int:
        """What the task asked for, never more than this worker gives one task."""
        asked = self.assignment.manifest.resources.disk_bytes
        if asked > self.config.task_disk:
            self.events.notice(
                f"the task asked for {human(asked)} of disk; this worker gives a task at most "
                f"{human(self.config.task_disk)}"
            )
        return min(asked, self.config.task_disk) if asked > 0 else self.config.task_disk

    def _run_on(
        self, header: pb.ResultHeader, bundle: Path, disk: TaskDisk
    ) -> tuple[pb.ResultHeader, Path | None]:
        manifest = self.assignment.manifest
        task_dir, out_dir = disk.task_dir, disk.out_dir
        try:
            unpack(bundle, task_dir, self.config.limits)
        except OSError as exc:
            if is_space_error(exc):
                raise DiskExceeded(exceeded_message(disk.limit, disk.used())) from None
            raise
        if disk.exceeded():
            raise DiskExceeded(exceeded_message(disk.limit, disk.used()))
        entry = _clean_relative(manifest.entry_notebook or "main.ipynb")
        if read_regular(task_dir / entry, self.config.limits.max_unpacked_bytes) is None:
            raise WorkerError(f"the entry notebook {entry} is not in the bundle")
        parameters = _parameters(manifest)
        wanted = requested_environment(manifest, task_dir)
        if self.stopper.stopped:
            return self._stopped(header), None

        timeout = self._timeout()
        started_at = time.monotonic()  # the timeout covers the build and the run
        with contextlib.ExitStack() as held:
            try:  # a cancel (or the timeout) during the build ends it; nothing of it is kept
                with build_deadline(self.stopper, timeout, timeout):
                    environment = held.enter_context(
                        self.executor.environment_for(wanted, EnvironmentReport(self.events), self.stopper)
                    )
            except BuildStopped:
                return self._stopped(header), None
            if self.stopper.stopped:
                return self._stopped(header), None
            if self.lease is not None and self.lease.bound:
                self._lease_file = self.lease.attach(self.folder / "lease", shared=self.executor.isolated)
            resources = manifest.resources
            spec = RunSpec(
                name=self.name,
                task_dir=task_dir,
                out_dir=out_dir,
                tmp_dir=disk.tmp_dir,
                notebook=entry,
                parameters=parameters,
                pull_variables=list(manifest.pull_variables),
                environment=environment,
                cpus=resources.cpus,
                memory_bytes=resources.memory_bytes or self.config.default_memory,
                gpus=resources.gpus,
                timeout=timeout,
                started_at=started_at,
                allow_network=self.assignment.allow_network,
                labels={"org.hivemind.task": self.task_id, "org.hivemind.attempt": str(self.number)},
                max_output_chars=notebook_output_chars(self.config.max_result_bytes),
                lease_dir=self._lease_file.parent if self._lease_file is not None else None,
            )
            self._status(pb.RUNNING, "running")
            watch = DiskWatch(disk, lambda why: self.stopper.stop(DISK, why))
            with watch:
                outcome = self.executor.run(spec, self._on_runner_event, self.stopper)
        self._settle(outcome, disk)
        if outcome.status == Outcome.STOPPED:
            if self.stopper.kind == "fenced":
                raise Fenced(self.stopper.reason)
            header = self._stopped(header)
            if header.requeue:
                return header, None  # it runs again elsewhere: nothing of this run is returned
            # Cancelled: the pool has already ended the task, so no UPLOADING report; the
            # result shows the user how far it got.
        else:
            self._apply(header, outcome)
            self._status(pb.UPLOADING, "uploading the result")
            self.events.phase(phases.UPLOADING)
        return self._pack_result(header, outcome, task_dir, out_dir, entry)

    def _settle(self, outcome: RunOutcome, disk: TaskDisk) -> None:
        """Why the run really ended, beyond what the executor saw."""
        if outcome.status == Outcome.LEASE_LAPSED:  # the runner stopped itself: a hand-back
            log.warning("%s stopped itself: this worker's lease lapsed", self.name)
            self.stopper.stop(LEASE, outcome.error or "this worker's lease lapsed")
            outcome.status = Outcome.STOPPED
        # Past the limit, by the watch or found now (a task that caught "no space left" and went
        # on, or filled it between two looks): a failure, whatever else the run said.
        over = disk.exceeded()
        if self.stopper.kind == DISK or (over and outcome.status != Outcome.STOPPED):
            message = self.stopper.reason if self.stopper.kind == DISK else exceeded_message(disk.limit, over)
            outcome.status, outcome.error, outcome.traceback = Outcome.OUT_OF_DISK, message, ""

    def _pack_result(
        self, header: pb.ResultHeader, outcome: RunOutcome, task_dir: Path, out_dir: Path, entry: str
    ) -> tuple[pb.ResultHeader, Path | None]:
        """The result archive of a finished (or cancelled) run; when it cannot be built the attempt
        fails and nothing is uploaded but the header."""
        result_path = self.folder / "result.zip"
        meta = {
            "task_id": self.task_id,
            "attempt": self.number,
            "outcome": pb.TaskState.Name(header.outcome),
            "error": header.error,
            "cpu_seconds": outcome.cpu_seconds,
            "peak_memory_bytes": outcome.peak_memory_bytes,
        }
        try:
            build_result(
                result_path,
                task_dir,
                out_dir,
                entry_notebook=entry,
                patterns=list(self.assignment.manifest.outputs) or list(DEFAULT_OUTPUTS),
                meta=meta,
                max_bytes=self.config.max_result_bytes,
                limits=self.config.limits,
            )
        except HiveMindError as exc:
            self._fail(header, f"the result could not be returned: {exc}")
            return header, None
        except OSError as exc:  # e.g. the worker's own disk
            log.warning("building the result of %s failed: %s", self.name, exc)
            self._fail(header, f"the result could not be returned: {exc}")
            return header, None
        pool_limit = self.config.pool_max_result_bytes
        size = result_path.stat().st_size
        if pool_limit > 0 and size > pool_limit and not header.requeue:
            # The pool would refuse it after the whole upload: say so now, and send nothing.
            result_path.unlink(missing_ok=True)
            why = f"the result is {human(size)}, over the pool's limit of {human(pool_limit)}"
            if header.outcome == pb.CANCELLED:  # ended already: only the result is dropped
                log.warning("%s: %s; not returned", self.name, why)
            else:
                self._fail(header, why)
            return header, None
        return header, result_path

    @staticmethod
    def _fail(header: pb.ResultHeader, why: str) -> None:
        """FAILED with `why`; a run that had failed already keeps its own reason first."""
        if header.outcome == pb.FAILED and header.error:
            header.error = f"{header.error}; {why}"
        else:
            header.outcome, header.error = pb.FAILED, why

    def _download(self, partial: Path) -> None:
        self.client.fetch_bundle(self.task_id, self.number, partial)

    def _timeout(self) -> float:
        seconds = self.assignment.manifest.timeout_seconds
        return float(seconds) if seconds > 0 else self.config.default_timeout

    def _stopped(self, header: pb.ResultHeader) -> pb.ResultHeader:
        """Cancelled, or handed back (requeue) when the worker drains or its lease lapsed, or timed
        out while the environment was built."""
        if self.stopper.kind == BUILD_TIMEOUT_KIND:
            header.outcome, header.error = pb.TIMED_OUT, self.stopper.reason
            return header
        header.outcome = Outcome.STOPPED.task_state
        header.error = self.stopper.reason
        header.requeue = self.stopper.kind in (REQUEUE, LEASE)
        return header

    @staticmethod
    def _apply(header: pb.ResultHeader, outcome: RunOutcome) -> None:
        header.metrics.cpu_seconds = outcome.cpu_seconds
        header.metrics.peak_memory_bytes = outcome.peak_memory_bytes
        header.traceback = outcome.traceback
        header.outcome = outcome.status.task_state
        if outcome.status == Outcome.OK:
            return
        header.error = {
            Outcome.NOTEBOOK_ERROR: outcome.error or "the notebook raised an exception",
            Outcome.KERNEL_DIED: outcome.error or "the kernel died",
            Outcome.RUNNER_ERROR: f"the notebook could not be run: {outcome.error}",
        }.get(outcome.status, outcome.error or outcome.status.value)

    def _upload(self, header: pb.ResultHeader, result: Path | None) -> None:
        """Send the outcome, retrying while the pool is away or its disk is full, or answers with
        another passing error. A stale attempt's refusal means it is not ours now; a refused result
        is final (the pool has ended the task with the reason), so neither is sent again."""
        deadline = time.monotonic() + UPLOAD_RETRY_FOR
        backoff = 0.5
        while True:
            try:
                self.client.upload_result(header, result)
                log.info(
                    "%s ended %s%s",
                    self.name,
                    pb.TaskState.Name(header.outcome),
                    f": {header.error.splitlines()[0]}" if header.error else "",
                )
                return
            except (Conflict, NotFound) as exc:
                log.warning("the pool refused the outcome of %s: %s", self.name, exc)
                return
            except ResultRefused as exc:
                log.error("the pool refused the result of %s, which ends the task: %s", self.name, exc)
                return
            except DiskFull as exc:
                # Not a refusal: the pool takes it once it has room again. Hold the result (its
                # folder stays) for as long as that takes, asking less often, without a deadline.
                log.warning(
                    "cannot upload %s yet (%s); holding it, retrying in %.1fs", self.name, exc, backoff
                )
                time.sleep(backoff)
                backoff = min(backoff * 2, DISK_FULL_BACKOFF)
                continue
            except PoolUnavailable as exc:
                if time.monotonic() > deadline:
                    log.error("giving up on uploading %s: %s", self.name, exc)
                    return
            except HiveMindError as exc:
                if time.monotonic() > deadline:
                    log.error("giving up on uploading %s: %s", self.name, exc)
                    return
                log.warning("uploading %s failed (%s); retrying", self.name, exc)
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
