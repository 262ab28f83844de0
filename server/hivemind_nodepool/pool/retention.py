"""Retention and collection: finished tasks' bundles and results are kept for the retention period,
then their blobs, once nothing references them, are deleted (row and file)."""

from __future__ import annotations

import logging
import os
import time

from hivemind_nodepool.pool.blobs import BlobStore
from hivemind_nodepool.pool.loops import repeat
from hivemind_nodepool.pool.store import Store

log = logging.getLogger(__name__)

ORPHAN_AGE = 3600.0  # a blob file with no row, older than this, is left from a crash: delete it


class InFlight:
    """Hashes that uploads or submissions are using right now; several may use the same one."""

    def __init__(self) -> None:
        self._users: dict[str, int] = {}

    def add(self, sha: str) -> None:
        self._users[sha] = self._users.get(sha, 0) + 1

    def discard(self, sha: str) -> None:
        left = self._users.get(sha, 0) - 1
        if left > 0:
            self._users[sha] = left
        else:
            self._users.pop(sha, None)

    def __contains__(self, sha: object) -> bool:
        return sha in self._users

    def hashes(self) -> set[str]:
        return set(self._users)


class Collector:
    def __init__(self, store: Store, blobs: BlobStore, retention: float, interval: float) -> None:
        self.store = store
        self.blobs = blobs
        self.retention = retention
        self.interval = interval
        self.in_flight = InFlight()  # hashes being written or committed right now

    def collect(self) -> int:
        """One pass; runs without awaiting, so no submit can slip in between look and delete."""
        expired = self.store.expire_finished_tasks(time.time() - self.retention)
        if expired:
            log.info("%d finished task(s) passed the retention period", expired)
        known = self.store.blob_hashes()
        unreferenced = known - self.store.referenced_blobs() - self.in_flight.hashes()
        for sha in unreferenced:
            self.blobs.delete(sha)
        self.store.delete_blob_rows(unreferenced)
        removed = len(unreferenced)
        now = time.time()
        for sha in list(self.blobs.stored_hashes()):
            if sha in known or sha in self.in_flight:
                continue
            path = self.blobs.path_for(sha)
            try:
                if now - os.stat(path).st_mtime > ORPHAN_AGE:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        if removed:
            log.info("collected %d unreferenced blob(s)", removed)
        return removed

    async def run(self) -> None:
        async def one_round() -> None:
            self.collect()

        await repeat(one_round, self.interval, "blob collection failed; retrying later", logger=log)
