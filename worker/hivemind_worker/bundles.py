"""Task bundles cached by sha256 under the state dir: a task submitted again downloads nothing.

A download is checked against its sha256 before it enters the cache; one download per hash even
when two attempts want it at once; past the size limit the least recently used bundles go.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path

from .errors import WorkerError

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


class BundleCache:
    def __init__(self, root: Path, size_limit: int) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.size_limit = size_limit
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self.downloads = 0

    def path_for(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise WorkerError(f"not a sha256 digest: {sha256!r}")
        return self.root / f"{sha256}.zip"

    def has(self, sha256: str) -> bool:
        """Whether the bundle is cached now (a get would download nothing)."""
        return self.path_for(sha256).exists()

    def get(self, sha256: str, download: Callable[[Path], None]) -> Path:
        """The bundle's cached path, downloading it with download(partial_path) when missing."""
        target = self.path_for(sha256)
        with self._guard:
            lock = self._locks.setdefault(sha256, threading.Lock())
        with lock:
            if target.exists():
                target.touch()  # last use, for eviction
                return target
            partial = target.with_suffix(".download")
            try:
                download(partial)
                actual = file_sha256(partial)
                if actual != sha256:
                    raise WorkerError(f"the bundle downloaded with sha256 {actual}, not {sha256}")
                partial.replace(target)
                self.downloads += 1
            finally:
                partial.unlink(missing_ok=True)
        self.evict(keep=sha256)
        return target

    def evict(self, keep: str = "") -> None:
        with self._guard:
            files = sorted(self.root.glob("*.zip"), key=lambda p: p.stat().st_mtime)
            total = sum(p.stat().st_size for p in files)
            for path in files:
                if total <= self.size_limit:
                    break
                if path.stem == keep:
                    continue
                total -= path.stat().st_size
                log.info("evicting cached bundle %s", path.stem[:12])
                path.unlink(missing_ok=True)
