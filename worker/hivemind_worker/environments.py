"""Task environments, one per requirements.txt: built once, shared, evicted least recently used.

A key is sha256 of the requirements and of what they are installed on (the runtime image's id, or
the worker's Python), so a new runtime image gets new environments. Two tasks asking for the same
key at once build it once: a lock per key in this process, and a file lock for other workers on
the same machine. An index file in the state dir remembers sizes and last use; past the size limit
the least recently used environments that no running task holds are removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hivemind_nodepool.protocol.files import atomic_write

from .errors import EnvironmentBuildError

log = logging.getLogger(__name__)

BUILD_TIMEOUT = 1800.0
MAX_REQUIREMENTS_BYTES = 1024 * 1024
Notice = Callable[[str], None]
# Reports the environment phase: cached=True (reused) or False (built), and step="..." as a build
# moves on (EventStream.phase("environment", ...) in an attempt).
PhaseReport = Callable[..., None]


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class EnvironmentCache(ABC):
    """Build-once, reference-counted, LRU-evicted environments under state_dir."""

    def __init__(self, state_dir: Path, size_limit: int) -> None:
        self.root = state_dir
        self.root.mkdir(parents=True, exist_ok=True)
        self.size_limit = size_limit
        self._guard = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._in_use: dict[str, int] = {}
        self.builds = 0  # how many environments this process built (the benchmark reads it)

    # -- what a kind of environment provides ----------------------------------------------------

    @abstractmethod
    def base_identity(self) -> str:
        """What the environments are installed on; part of every key."""

    @abstractmethod
    def default_ref(self) -> str:
        """The environment of a task without requirements."""

    @abstractmethod
    def exists(self, key: str) -> str | None:
        """The environment's reference when it is built, else None."""

    @abstractmethod
    def build(self, key: str, requirements: bytes) -> tuple[str, int]:
        """Build it; (reference, size in bytes). Raises EnvironmentBuildError."""

    @abstractmethod
    def remove(self, key: str, ref: str) -> None:
        """Delete it (ignore one that is already gone)."""

    # -- the cache ------------------------------------------------------------------------------

    def key_for(self, requirements: bytes) -> str:
        digest = hashlib.sha256()
        digest.update(b"hivemind-environment-v1\0")
        digest.update(self.base_identity().encode())
        digest.update(b"\0")
        digest.update(requirements.replace(b"\r\n", b"\n").strip())
        return digest.hexdigest()

    @contextmanager
    def use(
        self,
        requirements: bytes | None,
        notice: Notice = lambda _: None,
        on_phase: PhaseReport | None = None,
    ) -> Iterator[str]:
        """The environment for these requirements, built if needed, held while the block runs;
        on_phase hears whether it is reused or built (and a build's steps)."""
        if requirements is None or not requirements.strip():
            yield self.default_ref()
            return
        if len(requirements) > MAX_REQUIREMENTS_BYTES:
            raise EnvironmentBuildError("requirements.txt is larger than 1 MiB")
        key = self.key_for(requirements)
        on_phase = on_phase or (lambda **_: None)
        with self._guard:
            lock = self._key_locks.setdefault(key, threading.Lock())
            self._in_use[key] = self._in_use.get(key, 0) + 1
        try:
            with lock, self._file_lock(key):
                ref = self.exists(key)
                if ref is None:
                    on_phase(cached=False, step="installing requirements.txt")
                    notice(
                        f"installing requirements.txt into a new environment ({key[:12]}); "
                        "later tasks with the same requirements reuse it"
                    )
                    started = time.monotonic()
                    ref, size = self.build(key, requirements)
                    self.builds += 1
                    notice(f"environment {key[:12]} ready in {time.monotonic() - started:.1f}s")
                    self._record(key, ref, size)
                else:
                    on_phase(cached=True)
                    self._record(key, ref, None)
            self.evict()
            yield ref
        finally:
            with self._guard:
                self._in_use[key] -= 1
                if not self._in_use[key]:
                    del self._in_use[key]

    @contextmanager
    def _file_lock(self, key: str) -> Iterator[None]:
        locks = self.root / "locks"
        locks.mkdir(exist_ok=True)
        with open(locks / f"{key}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _index_path(self) -> Path:
        return self.root / "index.json"

    def _load_index(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self._index_path().read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save_index(self, index: dict[str, dict[str, Any]]) -> None:
        atomic_write(self._index_path(), json.dumps(index, indent=1))  # 0600: the state folder is private

    def _record(self, key: str, ref: str, size: int | None) -> None:
        with self._guard, self._file_lock("index"):
            index = self._load_index()
            entry = index.setdefault(key, {"ref": ref, "size": 0})
            entry["ref"] = ref
            if size is not None:
                entry["size"] = size
            entry["last_used"] = time.time()
            self._save_index(index)

    def entries(self) -> dict[str, dict[str, Any]]:
        return self._load_index()

    def evict(self) -> list[str]:
        """Remove least recently used environments until the total fits; returns removed keys."""
        removed: list[str] = []
        with self._guard, self._file_lock("index"):
            index = self._load_index()
            total = sum(int(entry.get("size", 0)) for entry in index.values())
            for key, entry in sorted(index.items(), key=lambda item: item[1].get("last_used", 0)):
                if total <= self.size_limit:
                    break
                if key in self._in_use:
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
            self._save_index(index)
        return removed


class DockerEnvironments(EnvironmentCache):
    """An image per requirements: the runtime image plus a layer with the packages in
    /opt/hivemind/env, made by running pip in a build container and committing it."""

    REPOSITORY = "hivemind-env"

    def __init__(
        self,
        client: Any,
        base_tag: str,
        state_dir: Path,
        size_limit: int,
        *,
        network: str | None = None,
        ca_bundle: Path | None = None,
    ) -> None:
        super().__init__(state_dir, size_limit)
        self.client = client
        self.base_tag = base_tag
        self.network = network
        self.ca_bundle = ca_bundle
        self._base_id: str | None = None

    def base_identity(self) -> str:
        if self._base_id is None:
            from .image import image_id

            self._base_id = image_id(self.client, self.base_tag)
        return self._base_id

    def default_ref(self) -> str:
        return self.base_tag

    def tag(self, key: str) -> str:
        return f"{self.REPOSITORY}:{key[:24]}"

    def exists(self, key: str) -> str | None:
        import docker.errors

        try:
            image = self.client.images.get(self.tag(key))
        except docker.errors.ImageNotFound:
            return None
        return self.tag(key) if image.labels.get("org.hivemind.env") == key else None

    def build(self, key: str, requirements: bytes) -> tuple[str, int]:
        from .image import default_build_network, default_ca_bundle

        network = self.network if self.network is not None else default_build_network(self.client)
        ca_bundle = self.ca_bundle if self.ca_bundle is not None else default_ca_bundle()
        with tempfile.TemporaryDirectory(prefix="hivemind-req-") as tmp:
            folder = Path(tmp)
            folder.chmod(0o755)
            (folder / "requirements.txt").write_bytes(requirements)
            (folder / "requirements.txt").chmod(0o644)
            from docker.types import Mount

            # Mounts, not `volumes=`: the SDK would also declare those paths as image volumes,
            # and the commit below would carry the declarations into the environment image.
            mounts = [Mount("/hivemind/req", str(folder), type="bind", read_only=True)]
            command = [
                "pip",
                "install",
                "--no-cache-dir",
                "--disable-pip-version-check",
                "--no-input",
                "--prefix",
                "/opt/hivemind/env",
                "-r",
                "/hivemind/req/requirements.txt",
            ]
            if ca_bundle and str(ca_bundle) != "none":
                mounts.append(
                    Mount("/hivemind/ca.pem", str(Path(ca_bundle).resolve()), type="bind", read_only=True)
                )
                command[2:2] = ["--cert", "/hivemind/ca.pem"]
            container = self.client.containers.create(
                self.base_tag,
                command=command,
                user="1000:1000",
                network_mode=network,
                mounts=mounts,
                tmpfs={"/tmp": "rw,nosuid,nodev,size=2g"},  # noqa: S108 (in the container)
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                pids_limit=1024,
                labels={"org.hivemind.role": "env-build", "org.hivemind.env": key},
            )
            try:
                container.start()
                try:
                    status = container.wait(timeout=BUILD_TIMEOUT)
                except Exception:
                    raise EnvironmentBuildError(
                        f"installing requirements.txt took longer than {BUILD_TIMEOUT:.0f}s"
                    ) from None
                output = container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
                if status.get("StatusCode") != 0:
                    raise EnvironmentBuildError(
                        f"installing requirements.txt failed (pip exit {status.get('StatusCode')}):\n"
                        + _tail(output)
                    )
                tag = self.tag(key)
                repository, _, version = tag.partition(":")
                container.commit(
                    repository=repository,
                    tag=version,
                    changes=[
                        'CMD ["python3"]',
                        "USER 1000:1000",
                        "WORKDIR /task",
                        f"LABEL org.hivemind.role=env org.hivemind.env={key}",
                    ],
                )
            finally:
                container.remove(force=True)
        image = self.client.images.get(tag)
        base = self.client.images.get(self.base_tag)
        return tag, max(int(image.attrs.get("Size", 0)) - int(base.attrs.get("Size", 0)), 0)

    def remove(self, key: str, ref: str) -> None:
        import docker.errors

        with contextlib.suppress(docker.errors.ImageNotFound):
            self.client.images.remove(ref or self.tag(key), noprune=False)


def _site_packages() -> list[str]:
    """The worker's own package folders, so a task venv sees papermill and ipykernel."""
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    return sorted(p for p in paths if os.path.isdir(p))


class LocalEnvironments(EnvironmentCache):
    """A venv per requirements, layered on the worker's own packages through a .pth file, so only
    what the requirements add is installed. No isolation: see executors/local.py."""

    def base_identity(self) -> str:
        return f"{sys.executable}|{sys.version}"

    def default_ref(self) -> str:
        return sys.executable

    def _folder(self, key: str) -> Path:
        return self.root / "venvs" / key[:24]

    def exists(self, key: str) -> str | None:
        python = self._folder(key) / "bin" / "python"
        return str(python) if (self._folder(key) / ".complete").exists() and python.exists() else None

    def build(self, key: str, requirements: bytes) -> tuple[str, int]:
        folder = self._folder(key)
        shutil.rmtree(folder, ignore_errors=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(folder)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise EnvironmentBuildError(f"creating a venv failed:\n{_tail(result.stderr)}")
        python = folder / "bin" / "python"
        where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        purelib = subprocess.run(
            [str(python), "-c", where], capture_output=True, text=True, check=True
        ).stdout.strip()
        Path(purelib, "_hivemind_worker_base.pth").write_text("\n".join(_site_packages()) + "\n")
        requirements_file = folder / "requirements.txt"
        requirements_file.write_bytes(requirements)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HIVEMIND_")}
        try:
            result = subprocess.run(
                [
                    str(python),
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "--no-input",
                    "-r",
                    str(requirements_file),
                ],
                capture_output=True,
                text=True,
                check=False,
                timeout=BUILD_TIMEOUT,
                env=env,
            )
        except subprocess.TimeoutExpired:
            shutil.rmtree(folder, ignore_errors=True)
            raise EnvironmentBuildError(
                f"installing requirements.txt took longer than {BUILD_TIMEOUT:.0f}s"
            ) from None
        if result.returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            raise EnvironmentBuildError(
                f"installing requirements.txt failed (pip exit {result.returncode}):\n"
                + _tail(result.stdout + result.stderr)
            )
        (folder / ".complete").touch()
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())
        return str(python), size

    def remove(self, key: str, ref: str) -> None:
        shutil.rmtree(self._folder(key), ignore_errors=True)
