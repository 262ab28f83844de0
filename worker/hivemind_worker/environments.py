"""Task environments, one per lock: built once, shared, evicted least recently used, failures kept.

A key is sha256 of what the environment holds (the lock or requirements text, the bundle's wheels)
and of what it is installed on (the runtime image's id, or the worker's Python), so a new runtime
image gets new environments. Two tasks asking for the same key at once build it once: a lock per
key in this process, and a file lock for other workers on the same machine. An index file in the
state dir remembers sizes, last use and what each holds; past the size limit the least recently
used environments that no running task holds are removed.

A build that failed is remembered with its message (failures.json): the same key fails at once,
without building, until `hivemind-worker env prune` forgets it, the runtime image changes (a new
key) or the admin changes where packages come from (the index fingerprint).

The builders (env_docker.py, env_local.py) install with uv from one package cache per machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.files import atomic_write

from .environment_request import IMAGE, LOCK, NONE, EnvironmentRequest
from .errors import BuildStopped, EnvironmentBuildError
from .uv import IndexSettings, tree_size

log = logging.getLogger(__name__)

BUILD_TIMEOUT = 1800.0
STOP_POLL = 0.2  # how often a build, or a wait for another task's build, looks at its stop event


class BuildReport(Protocol):
    """Where a build says what it does: steps (the live view's phase line) and notices."""

    def step(self, text: str) -> None: ...

    def reused(self) -> None: ...

    def notice(self, text: str) -> None: ...


class QuietReport:
    """A report nobody reads (benchmarks, tests of the cache alone)."""

    def step(self, text: str) -> None:
        log.debug("environment: %s", text)

    def reused(self) -> None:
        log.debug("environment: reused")

    def notice(self, text: str) -> None:
        log.debug("environment: %s", text)


class StepClock:
    """How long each step of a build took, for the debug log and the benchmark's breakdown."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, step: str) -> None:
        """The time since the last lap (or the start) went to step."""
        now = time.perf_counter()
        self.seconds[step] = self.seconds.get(step, 0.0) + now - self._last
        self._last = now

    def text(self) -> str:
        return ", ".join(f"{step} {seconds:.2f} s" for step, seconds in self.seconds.items())


@dataclass(frozen=True)
class Base:
    """What environments are installed on: a runtime image, or the worker's Python."""

    ref: str  # an image tag, or an interpreter's path
    identity: str  # the image's id, or the interpreter and its version
    python: str  # its minor version, e.g. "3.11"


class EnvironmentCache(ABC):
    """Build-once, reference-counted, LRU-evicted environments under state_dir."""

    kind = ""

    def __init__(self, state_dir: Path, size_limit: int, index: IndexSettings, worker_name: str = "") -> None:
        self.root = state_dir
        self.root.mkdir(parents=True, exist_ok=True)
        self.size_limit = size_limit
        self.index = index
        self.worker_name = worker_name or "this worker"
        self._guard = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._in_use: dict[str, int] = {}
        self.builds = 0  # environments this process built
        self.hits = 0  # tasks whose environment was built already
        self.failures = 0  # builds that failed, and remembered failures met again
        self._package_cache_size = -1
        self._measuring = False

    # -- what a kind of environment provides ----------------------------------------------------

    @abstractmethod
    def bases(self) -> dict[str, Base]:
        """What environments can be installed on, by Python minor version; the first is the default."""

    @abstractmethod
    def exists(self, key: str) -> str | None:
        """The environment's reference when it is built, else None."""

    @abstractmethod
    def build(
        self, key: str, request: EnvironmentRequest, base: Base, report: BuildReport, stop: threading.Event
    ) -> tuple[str, int]:
        """Build it; (reference, size in bytes). Raises EnvironmentBuildError; once stop is set it
        ends the build within a poll or two, leaves nothing behind and raises BuildStopped."""

    @abstractmethod
    def remove(self, key: str, ref: str) -> None:
        """Delete it (ignore one that is already gone)."""

    @abstractmethod
    def image_ref(self, request: EnvironmentRequest) -> str:
        """The environment of mode "image", or EnvironmentBuildError."""

    def python_versions(self) -> list[str]:
        return list(self.bases())

    def close(self) -> None:  # noqa: B027 - optional hook
        """Finish cleanup left to run after builds (the worker is stopping)."""

    # -- choosing what to install on ------------------------------------------------------------

    def base_for(self, request: EnvironmentRequest, report: BuildReport) -> Base:
        """The runtime of the task's Python when there is one; else the default, saying so."""
        bases = self.bases()
        wanted = request.python_minor
        if wanted in bases:
            return bases[wanted]
        default = next(iter(bases.values()))
        if not wanted:
            return default
        have = ", ".join(bases)
        if request.require_python:
            raise EnvironmentBuildError(
                f"the task requires Python {wanted}; this worker runs {have} "
                f"(its admin adds one with `hivemind-worker image build --python {wanted}`)"
            )
        same = ": the same pins are resolved for " + default.python if request.kind == LOCK else ""
        report.notice(f"this worker runs Python {default.python}, your kernel {wanted}{same}")
        return default

    def key_for(self, request: EnvironmentRequest, base: Base) -> str:
        digest = hashlib.sha256()
        digest.update(b"hivemind-environment-v2\0")
        digest.update(base.identity.encode() + b"\0" + request.kind.encode() + b"\0")
        digest.update(request.text.replace(b"\r\n", b"\n").strip())
        for wheel in sorted(request.wheels, key=lambda w: w.sha256):
            digest.update(b"\0" + wheel.sha256.encode())
        return digest.hexdigest()

    # -- the cache ------------------------------------------------------------------------------

    @contextmanager
    def use(
        self, request: EnvironmentRequest, report: BuildReport, stop: threading.Event | None = None
    ) -> Iterator[str]:
        """The environment for the request, built if needed, held while the block runs. Once stop
        is set, a build (or a wait for another task's build of it) ends with BuildStopped."""
        if request.kind == IMAGE:
            yield self.image_ref(request)
            return
        base = self.base_for(request, report)
        if request.kind == NONE:
            yield base.ref
            return
        key = self.key_for(request, base)
        stop = stop if stop is not None else threading.Event()
        with self._guard:
            lock = self._key_locks.setdefault(key, threading.Lock())
            self._in_use[key] = self._in_use.get(key, 0) + 1
        try:
            with self._holding(key):  # from before the build: a prune elsewhere never takes it
                with _acquired(lock, stop), self._file_lock(key, stop):
                    ref = self._get_or_build(key, request, base, report, stop)
                self.evict()
                yield ref
        finally:
            with self._guard:
                self._in_use[key] -= 1
                if not self._in_use[key]:
                    del self._in_use[key]

    def _get_or_build(
        self, key: str, request: EnvironmentRequest, base: Base, report: BuildReport, stop: threading.Event
    ) -> str:
        ref = self.exists(key)
        if ref is not None:
            self.hits += 1
            self._record(key, ref, None)
            report.reused()
            report.notice(f"environment cached on {self.worker_name}")
            return ref
        self._refuse_known_failure(key)
        report.step("resolving")
        started = time.monotonic()
        try:
            ref, size = self.build(key, request, base, report, stop)
        except BuildStopped:
            log.info("the build of environment %s was stopped; nothing of it is kept", key[:12])
            raise
        except EnvironmentBuildError as exc:
            self.failures += 1
            self._remember_failure(key, request, str(exc))
            raise
        finally:
            self._package_cache_size = -1
        self.builds += 1
        seconds = time.monotonic() - started
        report.step(f"ready in {seconds:.1f} s")
        report.notice(
            f"new environment built on {self.worker_name}, ready in {seconds:.1f} s; later tasks reuse it"
        )
        self._record(key, ref, size, request=request, base=base, seconds=seconds)
        return ref

    def _lock_file(self, name: str) -> Path:
        locks = self.root / "locks"
        locks.mkdir(exist_ok=True)
        return locks / f"{name}.lock"

    @contextmanager
    def _file_lock(self, key: str, stop: threading.Event | None = None) -> Iterator[None]:
        with open(self._lock_file(key), "w") as handle:
            if stop is None:
                fcntl.flock(handle, fcntl.LOCK_EX)
            else:  # another worker process may be building it: wait, but not past a stop
                while True:
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if stop.wait(STOP_POLL):
                            raise BuildStopped("stopped while another worker built the environment") from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def _holding(self, key: str) -> Iterator[None]:
        """A shared lock while a task uses the environment: `env prune` in another process skips it."""
        with open(self._lock_file(f"{key}.use"), "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _unused(self, key: str) -> bool:
        """No task of any worker process holds it (checked without waiting)."""
        if key in self._in_use:
            return False
        with open(self._lock_file(f"{key}.use"), "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(handle, fcntl.LOCK_UN)
            return True

    # -- the index and the failures -------------------------------------------------------------

    def _load(self, name: str) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads((self.root / name).read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save(self, name: str, data: dict[str, dict[str, Any]]) -> None:
        atomic_write(self.root / name, json.dumps(data, indent=1))  # 0600: the state folder is private

    def _record(
        self,
        key: str,
        ref: str,
        size: int | None,
        *,
        request: EnvironmentRequest | None = None,
        base: Base | None = None,
        seconds: float = 0.0,
    ) -> None:
        with self._guard, self._file_lock("index"):
            index = self._load("index.json")
            entry = index.setdefault(key, {"ref": ref, "size": 0, "built_at": time.time()})
            entry["ref"] = ref
            entry["kind"] = self.kind
            if size is not None:
                entry["size"] = size
            if request is not None and base is not None:
                entry.update(
                    summary=request.describe(),
                    packages=len(request.requirements) + len(request.wheels),
                    mode=request.kind,
                    python=base.python,
                    base=base.identity,
                    pins=sorted(r.line for r in request.requirements) if not request.wheels else [],
                    build_seconds=round(seconds, 2),
                )
            entry["last_used"] = time.time()
            self._save("index.json", index)

    def _refuse_known_failure(self, key: str) -> None:
        known = self._load("failures.json").get(key)
        if known is None or known.get("index") != self.index.fingerprint():
            return
        self.failures += 1
        raise EnvironmentBuildError(
            f"{known.get('message', 'it failed')}\n(this environment failed to build on "
            f"{self.worker_name} before and is not tried again until `hivemind-worker env prune "
            f"{key[:12]}`, a new runtime image or new index settings)"
        )

    def _remember_failure(self, key: str, request: EnvironmentRequest, message: str) -> None:
        with self._guard, self._file_lock("index"):
            failures = self._load("failures.json")
            failures[key] = {
                "message": message[:4000],
                "at": time.time(),
                "index": self.index.fingerprint(),
                "summary": request.describe(),
                "kind": self.kind,
            }
            self._save("failures.json", failures)

    def entries(self) -> dict[str, dict[str, Any]]:
        return self._load("index.json")

    def closest(self, request: EnvironmentRequest, base: Base) -> str | None:
        """A built environment on the same base whose pins are all in this lock, the one with the
        most: a new environment built on it installs (and stores) only what it adds."""
        if request.kind != LOCK:
            return None
        wanted = {r.line for r in request.requirements}
        best: tuple[int, str] | None = None
        for key, entry in self.entries().items():
            pins = set(entry.get("pins") or ())
            if entry.get("base") != base.identity or not pins or not pins <= wanted:
                continue
            if (best is None or len(pins) > best[0]) and self.exists(key) is not None:
                best = (len(pins), str(entry["ref"]))
        return best[1] if best is not None else None

    def known_failures(self) -> dict[str, dict[str, Any]]:
        return self._load("failures.json")

    # -- reports and housekeeping ---------------------------------------------------------------

    def package_cache_size(self) -> int:
        """The shared package cache's size, measured again after each build or prune on a thread
        of its own (a large cache takes a while to walk, and heartbeats ask for it)."""
        with self._guard:
            stale = self._package_cache_size < 0 and not self._measuring
            self._measuring = self._measuring or stale
        if stale:
            threading.Thread(target=self._measure, name="package-cache-size", daemon=True).start()
        return max(self._package_cache_size, 0)

    def _measure(self) -> None:
        try:
            self._package_cache_size = tree_size(self.index.cache_dir)
        finally:
            self._measuring = False

    def stats(self) -> pb.EnvironmentCacheStats:
        """What the heartbeats report."""
        entries = self.entries()
        size = sum(int(entry.get("size", 0)) for entry in entries.values())
        return pb.EnvironmentCacheStats(
            environments=len(entries),
            size_bytes=size + self.package_cache_size(),
            hits=self.hits,
            builds=self.builds,
            failures=self.failures,
        )

    def prune(self, keys: list[str] | None = None, older_than: float | None = None) -> list[str]:
        """Remove environments no task uses, and forget failures: those whose key starts with one of
        `keys`, or last used more than `older_than` seconds ago, or (neither given) all of them.
        Returns the removed keys."""
        now = time.time()

        def chosen(key: str, entry: dict[str, Any], when: str) -> bool:
            if keys:
                return any(key.startswith(prefix) for prefix in keys)
            return older_than is None or now - float(entry.get(when, 0)) > older_than

        removed: list[str] = []
        with self._guard, self._file_lock("index"):
            index = self._load("index.json")
            for key, entry in list(index.items()):
                if not chosen(key, entry, "last_used") or not self._unused(key):
                    continue
                try:
                    self.remove(key, str(entry.get("ref", "")))
                except Exception as exc:  # e.g. a container of another worker uses the image
                    log.warning("could not remove environment %s: %s", key[:12], exc)
                    continue
                del index[key]
                removed.append(key)
            self._save("index.json", index)
            failures = self._load("failures.json")
            for key, entry in list(failures.items()):
                if chosen(key, entry, "at"):
                    del failures[key]
                    removed.append(key)
            self._save("failures.json", failures)
        self._package_cache_size = -1
        return removed

    def evict(self) -> list[str]:
        """Remove least recently used environments until the total fits; returns removed keys."""
        removed: list[str] = []
        with self._guard, self._file_lock("index"):
            index = self._load("index.json")
            total = sum(int(entry.get("size", 0)) for entry in index.values())
            for key, entry in sorted(index.items(), key=lambda item: item[1].get("last_used", 0)):
                if total <= self.size_limit:
                    break
                if not self._unused(key):
                    continue
                log.info(
                    "evicting environment %s (%d bytes, least recently used)", key[:12], entry.get("size", 0)
                )
                try:
                    self.remove(key, str(entry.get("ref", "")))
                except Exception as exc:  # in use by another worker, say: try again next time
                    log.warning("could not remove environment %s: %s", key[:12], exc)
                    continue
                total -= int(entry.get("size", 0))
                del index[key]
                removed.append(key)
            self._save("index.json", index)
        return removed


@contextmanager
def _acquired(lock: threading.Lock, stop: threading.Event) -> Iterator[None]:
    """The key's lock, waited for while another task builds the environment, until stop is set."""
    while not lock.acquire(timeout=STOP_POLL):
        if stop.is_set():
            raise BuildStopped("stopped while another task built the environment")
    try:
        if stop.is_set():
            raise BuildStopped("stopped before the environment was built")
        yield
    finally:
        lock.release()


def listing(cache: EnvironmentCache) -> list[dict[str, Any]]:
    """Every environment and remembered failure, for `hivemind-worker env list`."""
    rows: list[dict[str, Any]] = []
    for key, entry in cache.entries().items():
        rows.append({"key": key, "failed": False, **entry})
    for key, entry in cache.known_failures().items():
        rows.append({"key": key, "failed": True, "last_used": entry.get("at", 0), **entry})
    with contextlib.suppress(TypeError):
        rows.sort(key=lambda row: -float(row.get("last_used", 0)))
    return rows
