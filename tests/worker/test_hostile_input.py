"""Hostile bundles and hostile task output: refused with a clear reason, nothing written outside
the task folder, nothing of the worker's machine sent back."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import pytest

from hivemind_nodepool.protocol.bundle import BundleError, BundleLimits
from hivemind_nodepool.protocol.errors import InvalidInput
from hivemind_worker.attempt import container_name, unpack
from hivemind_worker.errors import WorkerError
from hivemind_worker.results import build_result, collect_outputs

from .helpers import notebook, submit, user


def _zip(
    path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]], compression: int = zipfile.ZIP_DEFLATED
) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for info, data in entries:
            archive.writestr(info, data)
    return path


def _symlink(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _special(name: str, kind: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (kind | 0o666) << 16
    return info


HOSTILE = {
    "zip-slip": ([("../../escaped.txt", b"x")], "climbs out"),
    "deep zip-slip": ([("a/b/../../../escaped.txt", b"x")], "climbs out"),
    "absolute path": ([("/tmp/escaped-absolute.txt", b"x")], "absolute"),
    "symlink": ([(_symlink("link", "/etc/passwd"), b"/etc/passwd")], "symbolic link"),
    "duplicate": ([("a.txt", b"1"), ("a.txt", b"2")], "twice"),
    "file and folder": ([("a", b"1"), ("a/b", b"2")], "inside"),
    "device": ([(_special("dev", stat.S_IFCHR), b"")], "not a regular file"),
    "fifo": ([(_special("fifo", stat.S_IFIFO), b"")], "not a regular file"),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_bundle_is_refused_and_leaves_nothing(case: str, tmp_path: Path) -> None:
    entries, reason = HOSTILE[case]
    hostile = _zip(tmp_path / "hostile.zip", entries)
    root = tmp_path / "attempt"
    root.mkdir()
    before = set(tmp_path.rglob("*"))
    with pytest.raises(BundleError, match=reason):
        unpack(hostile, root / "task", BundleLimits())
    assert set(tmp_path.rglob("*")) == before, "something was written"
    assert not (root / "task").exists()
    assert not Path("/tmp/escaped-absolute.txt").exists()


def test_too_many_files_is_refused(tmp_path: Path) -> None:
    hostile = _zip(tmp_path / "many.zip", [(f"f{i}", b"") for i in range(2001)], zipfile.ZIP_STORED)
    with pytest.raises(BundleError, match="entries"):
        unpack(hostile, tmp_path / "task", BundleLimits(max_files=2000))
    assert not (tmp_path / "task").exists()


def test_too_many_bytes_is_refused(tmp_path: Path) -> None:
    big = _zip(tmp_path / "big.zip", [("a.bin", os.urandom(3 * 1024 * 1024))])
    with pytest.raises(BundleError, match="more than"):
        unpack(big, tmp_path / "task", BundleLimits(max_unpacked_bytes=2 * 1024 * 1024))
    assert not (tmp_path / "task").exists()


def test_lying_sizes_are_caught_while_unpacking(tmp_path: Path) -> None:
    """An entry whose header claims fewer bytes than it holds is stopped by counting."""
    path = _zip(tmp_path / "liar.zip", [("a.txt", b"A" * 5000)], zipfile.ZIP_STORED)
    raw = bytearray(path.read_bytes())
    # Patch the declared uncompressed size (local header and central directory) down to 10 bytes.
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = raw.find(signature)
        raw[at + offset : at + offset + 4] = (10).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises((BundleError, zipfile.BadZipFile)):
        unpack(path, tmp_path / "task", BundleLimits())
    assert not (tmp_path / "task").exists()


def test_ordinary_linux_names_and_compressible_data_unpack(tmp_path: Path) -> None:
    """Names that differ in case, a backslash in a name, 64 MiB of zeros: a bundle from a Linux
    folder, unpacked whole on a Linux worker."""
    entries = [
        ("main.ipynb", notebook("1")),
        ("data/Table.csv", b"upper"),
        ("data/table.csv", b"lower"),
        ("data/back\\slash.txt", b"backslash"),
        ("zeros.bin", b"\0" * (64 * 1024 * 1024)),
    ]
    good = _zip(tmp_path / "linux.zip", entries)
    assert unpack(good, tmp_path / "task", BundleLimits()) > 64 * 1024 * 1024
    for name, data in entries:
        assert (tmp_path / "task" / name).read_bytes() == data, name


def test_a_good_bundle_unpacks(tmp_path: Path) -> None:
    good = _zip(tmp_path / "good.zip", [("main.ipynb", notebook("1")), ("data/x.csv", b"a,b\n")])
    assert unpack(good, tmp_path / "task", BundleLimits()) > 0
    assert (tmp_path / "task" / "data" / "x.csv").read_bytes() == b"a,b\n"


def test_the_pool_refuses_hostile_bundles_before_any_worker_sees_them(pool) -> None:
    alice = user(pool)
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        archive.writestr("main.ipynb", notebook("1"))
        archive.writestr("../escaped.txt", b"x")
    with pytest.raises(InvalidInput, match="climbs out"):
        submit(alice, data.getvalue())


def test_result_never_follows_links_out_of_the_task(tmp_path: Path) -> None:
    """A task may leave links to the worker's files in outputs/: they are not packed."""
    task, out = tmp_path / "task", tmp_path / "out"
    (task / "outputs" / "sub").mkdir(parents=True)
    out.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("the worker's secret")
    (task / "outputs" / "ok.txt").write_text("fine")
    (task / "outputs" / "leak.txt").symlink_to(secret)
    (task / "outputs" / "dir-leak").symlink_to(tmp_path)
    os.mkfifo(task / "outputs" / "fifo")
    (out / "executed.ipynb").symlink_to(secret)  # the executed notebook replaced by a link
    (out / "variables.json").symlink_to(secret)
    names = [name for name, _ in collect_outputs(task, ["outputs/**"])]
    assert names == ["outputs/ok.txt"]
    packed = build_result(
        tmp_path / "result.zip",
        task,
        out,
        entry_notebook="main.ipynb",
        patterns=["outputs/**"],
        meta={},
        max_bytes=10 * 1024 * 1024,
    )
    with zipfile.ZipFile(packed.path) as archive:
        contents = b"".join(archive.read(n) for n in archive.namelist())
        assert "main.ipynb" not in archive.namelist()
    assert b"secret" not in contents


def test_a_sparse_huge_output_is_refused_by_its_size_without_reading_it(tmp_path: Path) -> None:
    task, out = tmp_path / "task", tmp_path / "out"
    (task / "outputs").mkdir(parents=True)
    out.mkdir()
    with open(task / "outputs" / "sparse.bin", "wb") as handle:
        handle.truncate(10 * 1000**3)  # 10 GB that take no space
    with pytest.raises(WorkerError, match=r"too big.*sparse\.bin \(9536\.7 MiB\)"):
        build_result(
            tmp_path / "r.zip",
            task,
            out,
            entry_notebook="main.ipynb",
            patterns=["outputs/**"],
            meta={},
            max_bytes=1024**3,
        )
    assert not (tmp_path / "r.zip").exists()


def test_a_million_tiny_outputs_are_refused_before_packing(tmp_path: Path) -> None:
    """The file count is checked while the outputs are collected (the walk stops at the limit), so
    the worker neither packs nor uploads a result the pool and the user's side would refuse."""
    task, out = tmp_path / "task", tmp_path / "out"
    (task / "outputs").mkdir(parents=True)
    out.mkdir()
    for i in range(120):  # the same walk and cap as a million files, at a test's scale
        (task / "outputs" / f"f{i}").write_bytes(b"")
    with pytest.raises(WorkerError, match="more than 99 files"):
        build_result(
            tmp_path / "r.zip",
            task,
            out,
            entry_notebook="main.ipynb",
            patterns=["outputs/**"],
            meta={},
            max_bytes=1024**3,
            limits=BundleLimits(max_files=100),
        )
    assert not (tmp_path / "r.zip").exists()


def test_result_size_is_capped(tmp_path: Path) -> None:
    task, out = tmp_path / "task", tmp_path / "out"
    (task / "outputs").mkdir(parents=True)
    out.mkdir()
    (task / "outputs" / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    with pytest.raises(WorkerError, match="too big"):
        build_result(
            tmp_path / "r.zip",
            task,
            out,
            entry_notebook="main.ipynb",
            patterns=["outputs/**"],
            meta={},
            max_bytes=1024 * 1024,
        )


@pytest.mark.parametrize("task_id", ["t-abc", "../../etc", "x" * 300, "a b;rm -rf /", ""])
def test_container_names_are_safe(task_id: str) -> None:
    name = container_name(task_id, 3)
    assert name.startswith("hivemind-") and name.endswith("-3")
    assert all(c.isalnum() or c in "-_." for c in name) and len(name) < 100
