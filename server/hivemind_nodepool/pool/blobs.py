"""Content-addressed files under DATA/blobs/ab/cdef...: written to a temp file while hashing, fsynced,
then renamed into place, so a blob a task row points to is always whole."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from hivemind_nodepool.pool.disk import MESSAGE, DiskGuard, is_disk_full
from hivemind_nodepool.protocol.errors import DiskFull, InvalidInput, NotFound, TooLarge
from hivemind_nodepool.protocol.files import fsync_dir

log = logging.getLogger(__name__)

_HEX = re.compile(r"^[0-9a-f]{64}$")
INLINE_BYTES = 64 * 1024  # smaller chunks are hashed and written on the loop: cheaper than a thread hop
CHECK_ROOM_EVERY = 8 * 1024**2  # an upload asks the disk guard for room again after this many bytes


class BlobWriter:
    """One incoming blob: feed chunks, then `finish` checks size and hash and moves it into place.

    Hashing and writing run in a worker thread (both release the GIL), one chunk at a time and
    overlapping the receipt of the next chunk, so the event loop stays free and memory holds at most
    two chunks."""

    def __init__(self, store: BlobStore, max_size: int) -> None:
        self._store = store
        self.max_size = max_size
        self.size = 0
        self._digest = hashlib.sha256()
        self._pending: asyncio.Future[None] | None = None
        self._checked_at = 0  # bytes received when the disk was last asked for room
        fd_name = f"{os.getpid()}-{time.monotonic_ns()}-{id(self):x}.part"
        self.tmp_path = store.tmp_dir / fd_name
        try:
            self._file = open(self.tmp_path, "wb", buffering=0)  # noqa: SIM115 (closed in finish/abort)
        except OSError as exc:
            raise store.no_space(exc) from None

    def _absorb(self, data: bytes) -> None:
        self._digest.update(data)
        view = memoryview(data)
        while view:
            written = self._file.write(view)
            view = view[written:] if written else view

    async def _drain(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            try:
                await pending
            except OSError as exc:
                raise self._store.no_space(exc) from None

    async def write(self, data: bytes) -> None:
        if self.size == 0 or self.size - self._checked_at >= CHECK_ROOM_EVERY:
            self._checked_at = self.size
            self._store.require_space()  # a full disk refuses new data before it is written
        self.size += len(data)
        if self.size > self.max_size:
            raise TooLarge(f"the upload is larger than the pool's limit of {self.max_size} bytes")
        await self._drain()  # the previous chunk is hashed and written before this one starts
        if len(data) <= INLINE_BYTES:
            try:
                self._absorb(data)
            except OSError as exc:
                raise self._store.no_space(exc) from None
        else:
            self._pending = asyncio.get_running_loop().run_in_executor(None, self._absorb, data)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    async def verify(self, expected_sha256: str) -> None:
        """The data must hash to what the sender said it sent."""
        await self._drain()
        claimed = expected_sha256.strip().lower()
        if not _HEX.match(claimed):
            raise InvalidInput("the sha256 sent after the data is not 64 hex digits")
        if claimed != self.sha256:
            raise InvalidInput(
                f"sha256 mismatch: the data hashes to {self.sha256}, the sender said {claimed}"
            )

    async def finish(self) -> str:
        """fsync and rename into place (after verify); returns the hash. The caller then records it."""
        await self._drain()
        target = self._store.path_for(self.sha256)
        try:
            await asyncio.to_thread(self._settle, target)
        except OSError as exc:
            raise self._store.no_space(exc) from None
        return self.sha256

    def _settle(self, target: Path) -> None:
        os.fsync(self._file.fileno())
        self._file.close()
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.tmp_path, target)
        fsync_dir(target.parent)

    def abort(self) -> None:
        """Drop the upload (safe to call from an error path at any point, even twice)."""
        pending, self._pending = self._pending, None
        if pending is not None and not pending.done():
            pending.add_done_callback(self._discard_after)
        else:
            self._discard()

    def _discard_after(self, pending: asyncio.Future[None]) -> None:
        if not pending.cancelled():
            pending.exception()  # seen here, so asyncio does not report it as never retrieved
        self._discard()

    def _discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.tmp_path.unlink(missing_ok=True)


async def receive_head(parts: AsyncIterator[Any], head: str, if_empty: str, if_not_first: str) -> Any:
    """The first part of a client-streamed upload, which must be its `head` (the part's oneof
    name); InvalidInput with if_empty or if_not_first otherwise. The chunks follow (receive_chunks)."""
    try:
        first = await parts.__anext__()
    except StopAsyncIteration:
        raise InvalidInput(if_empty) from None
    if first.WhichOneof("part") != head:
        raise InvalidInput(if_not_first)
    return first


async def receive_chunks(parts: AsyncIterator[Any], writer: BlobWriter, what: str, head: str) -> str:
    """Write the chunks of a client-streamed upload (after its first part, the `head`) into
    writer; return the sha256 the client claims at the end ('' allowed: the caller decides).

    Both uploads (SubmitRequest, UploadResultRequest) share this shape: head, chunk..., sha256."""
    claimed: str | None = None
    async for part in parts:
        kind = part.WhichOneof("part")
        if claimed is not None:
            raise InvalidInput(f"nothing may follow the sha256 in {what}")
        if kind == "chunk":
            await writer.write(part.chunk)
        elif kind == "sha256":
            claimed = part.sha256
        else:
            raise InvalidInput(f"{what} has exactly one {head}, sent first")
    if claimed is None:
        raise InvalidInput("the upload ended without its sha256, so it was not stored; send it again")
    return claimed


class BlobStore:
    def __init__(self, root: Path, disk: DiskGuard | None = None) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.disk = disk

    def require_space(self) -> None:
        """DiskFull when the pool's disk cannot take new data now."""
        if self.disk is not None:
            self.disk.require_space()

    def no_space(self, exc: OSError) -> Exception:
        """The error to raise for a failed write: DiskFull when it was for lack of space."""
        if not is_disk_full(exc):
            return exc
        return self.disk.hit(exc) if self.disk is not None else DiskFull(MESSAGE)

    def path_for(self, sha256: str) -> Path:
        if not _HEX.match(sha256):
            raise InvalidInput(f"not a sha256: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:]

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def writer(self, max_size: int) -> BlobWriter:
        return BlobWriter(self, max_size)

    def clean_tmp(self) -> int:
        """Remove half-written uploads left by a crash (call at start, before serving)."""
        removed = 0
        if self.tmp_dir.is_dir():
            for leftover in self.tmp_dir.iterdir():
                leftover.unlink(missing_ok=True)
                removed += 1
        return removed

    def stored_hashes(self) -> Iterator[str]:
        for folder in self.root.iterdir():
            if folder.name == "tmp" or not folder.is_dir() or len(folder.name) != 2:
                continue
            for item in folder.iterdir():
                name = folder.name + item.name
                if _HEX.match(name):
                    yield name

    def delete(self, sha256: str) -> None:
        self.path_for(sha256).unlink(missing_ok=True)

    def read_chunks(self, sha256: str, chunk_size: int, what: str) -> Iterator[bytes]:
        """The blob in chunks; NotFound naming `what` (e.g. "the result of task X") when its file
        is gone."""
        path = self.path_for(sha256)
        if not path.is_file():
            raise NotFound(f"{what} is missing from the pool's storage")
        with open(path, "rb") as handle:
            while block := handle.read(chunk_size):
                yield block
