"""A hostile result, unpacked on the user's side (the magic's and the panel's `fetch_into`, and
`hivemind fetch`'s unpacker): the ZIPs are built here and handed over as if the pool had sent them,
so these are the checks that still hold when the pool or a worker is not to be trusted.

Nothing lands outside the results folder, a refused result leaves nothing behind, the user's own
files are never overwritten, and two results never share a folder."""

from __future__ import annotations

import json
import stat
import zipfile
from pathlib import Path

import pytest

from hivemind_jupyter.results import FETCH_RECORD, fetch_into, fetch_to, folder_name, keep_asked_for
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.bundle import BundleLimits, LocalNames
from hivemind_nodepool.protocol.errors import BundleError, InvalidInput

NOTEBOOK = b'{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}'


class ResultSource:
    """Stands where the pool stands: `fetch_result` hands over a ZIP made by the test."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.fetches = 0

    def fetch_result(self, task_id: str, destination: Path) -> Path:
        self.fetches += 1
        Path(destination).write_bytes(self.data)
        return Path(destination)


def _task(task_id: str = "t-0123456789ab", sha: str = "a" * 64) -> pb.Task:
    return pb.Task(
        id=task_id,
        state=pb.SUCCEEDED,
        result_sha256=sha,
        manifest=pb.Manifest(name="job", entry_notebook="main.ipynb"),
    )


def _zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("main.ipynb", NOTEBOOK)
        for name, data in entries:
            archive.writestr(name, data)
    return path.read_bytes()


def _mode(name: str, kind: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (kind | 0o777) << 16
    return info


def _declare(data: bytes, name: bytes, size: int) -> bytes:
    """The archive with `name`'s uncompressed size in the central directory set to `size`."""
    raw = bytearray(data)
    at = raw.find(b"PK\x01\x02")
    while at >= 0:
        length = int.from_bytes(raw[at + 28 : at + 30], "little")
        if raw[at + 46 : at + 46 + length] == name:
            raw[at + 24 : at + 28] = size.to_bytes(4, "little")
            return bytes(raw)
        at = raw.find(b"PK\x01\x02", at + 4)
    raise AssertionError(f"{name!r} is not in the archive")


def _claim_entries(data: bytes, count: int) -> bytes:
    raw = bytearray(data)
    end = raw.rfind(b"PK\x05\x06")
    raw[end + 8 : end + 12] = count.to_bytes(2, "little") * 2
    return bytes(raw)


def _hostile(tmp_path: Path, case: str) -> tuple[bytes, str]:
    zip_path = tmp_path / f"{case}.zip"
    if case == "traversal":
        return _zip(zip_path, [("../../escaped.txt", b"x")]), "climbs out"
    if case == "deep traversal":
        return _zip(zip_path, [("outputs/a/../../../escaped.txt", b"x")]), "climbs out"
    if case == "absolute":
        return _zip(zip_path, [("/tmp/escaped-by-result.txt", b"x")]), "absolute"
    if case == "symlink":
        return _zip(zip_path, [(_mode("outputs/link", stat.S_IFLNK), b"/etc/passwd")]), "symbolic link"
    if case == "device":
        return _zip(zip_path, [(_mode("outputs/disk", stat.S_IFBLK), b"")]), "not a regular file"
    if case == "fifo":
        return _zip(zip_path, [(_mode("outputs/pipe", stat.S_IFIFO), b"")]), "not a regular file"
    if case == "many tiny files":
        # A million entries, at a test's scale: the same count check, against a limit of 50.
        return _zip(zip_path, [(f"outputs/f{i}", b"") for i in range(60)]), "entries; the limit is 50"
    if case == "many tiny files, count hidden":
        hidden = _claim_entries(_zip(zip_path, [(f"outputs/f{i}", b"") for i in range(60)]), 2)
        return hidden, "more than 50 entries"
    if case == "sparse 10 GB file":
        # Declares ~4 GiB (what fits the field); the limit here is 1 GiB. A 10 GB one is refused the
        # same way, by its declared size, before a byte is written.
        data = _zip(zip_path, [("outputs/sparse.bin", bytes(4096))])
        return _declare(data, b"outputs/sparse.bin", 0xFFFFFFF0), "unpacks to more than"
    if case == "lying size":
        data = _zip(zip_path, [("outputs/ok.txt", b"fine"), ("outputs/liar.bin", b"y" * 100_000)])
        return _declare(data, b"outputs/liar.bin", 10), "unpacks to more|damaged"
    raise AssertionError(case)


HOSTILE = [
    "traversal",
    "deep traversal",
    "absolute",
    "symlink",
    "device",
    "fifo",
    "many tiny files",
    "many tiny files, count hidden",
    "sparse 10 GB file",
    "lying size",
]
LIMITS = BundleLimits(max_files=50, max_unpacked_bytes=1024**3)


def _tree(root: Path) -> dict[str, bytes | None]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_result_is_refused_and_leaves_nothing(tmp_path: Path, case: str) -> None:
    data, reason = _hostile(tmp_path, case)
    home = tmp_path / "home"
    results = home / "hivemind-results"
    (results / "older-result").mkdir(parents=True)
    (results / "older-result" / "notes.txt").write_text("the user's own file")
    (home / "escaped.txt").write_text("the user's file next to the results folder")
    before = _tree(tmp_path)
    with pytest.raises(BundleError) as caught:
        fetch_into(ResultSource(data), _task(), results, LIMITS)  # type: ignore[arg-type]
    assert caught.match(reason), str(caught.value)
    assert _tree(tmp_path) == before, "the refused result left something behind or changed a file"
    assert not Path("/tmp/escaped-by-result.txt").exists()


def test_names_this_filesystem_cannot_hold_are_renamed_and_said(tmp_path: Path) -> None:
    data = _zip(
        tmp_path / "odd.zip",
        [
            ("outputs/Report.txt", b"upper"),
            ("outputs/report.txt", b"lower"),
            ("outputs/a\\b.txt", b"backslash"),
            ("outputs/CON", b"reserved"),
            (
                ".hivemind/result.json",
                json.dumps({"renamed": {"b'outputs/caf\\xe9'": "outputs/caf\\xe9"}}).encode(),
            ),
        ],
    )
    task = _task()
    source = ResultSource(data)
    windows = LocalNames(windows=True, case_insensitive=True)
    fetched = fetch_into(source, task, tmp_path / "results", names=windows)  # type: ignore[arg-type]
    assert fetched.renamed == {
        "outputs/report.txt": "outputs/report~2.txt",
        "outputs/a\\b.txt": "outputs/a_b.txt",
        "outputs/CON": "outputs/_CON",
        "b'outputs/caf\\xe9'": "outputs/caf\\xe9",  # the worker's, from result.json
    }
    folder = tmp_path / "results" / folder_name(task)
    assert fetched.folder == folder and fetched.notebook == folder / "job - t-0123456789ab.ipynb"
    assert (folder / "outputs" / "report~2.txt").read_bytes() == b"lower"
    assert (folder / "outputs" / "Report.txt").read_bytes() == b"upper"
    assert (folder / "outputs" / "a_b.txt").read_bytes() == b"backslash"
    assert json.loads((folder / FETCH_RECORD).read_text())["renamed"] == fetched.renamed
    # Fetching again finds it (and its renames) without downloading again.
    again = fetch_into(source, task, tmp_path / "results", names=windows)  # type: ignore[arg-type]
    assert again.folder == folder and again.renamed == fetched.renamed and source.fetches == 1


def test_the_users_folder_of_the_same_name_is_never_merged_into(tmp_path: Path) -> None:
    task = _task()
    results = tmp_path / "results"
    mine = results / folder_name(task)
    (mine / "outputs").mkdir(parents=True)
    (mine / "outputs" / "x.txt").write_text("the user's own x")
    data = _zip(tmp_path / "r.zip", [("outputs/x.txt", b"the result's x")])
    fetched = fetch_into(ResultSource(data), task, results)  # type: ignore[arg-type]
    assert fetched.folder == results / f"{folder_name(task)}-2"
    assert (mine / "outputs" / "x.txt").read_text() == "the user's own x"
    assert _tree(mine) == {"outputs": None, "outputs/x.txt": b"the user's own x"}
    assert (fetched.folder / "outputs" / "x.txt").read_bytes() == b"the result's x"


def test_two_results_of_one_name_get_two_folders(tmp_path: Path) -> None:
    """Two results that would take one folder (the same task id from two pools, or a result that
    changed): the second gets a folder of its own, and each folder holds one result only."""
    results = tmp_path / "results"
    first = fetch_into(
        ResultSource(_zip(tmp_path / "1.zip", [("outputs/only-in-first.txt", b"1")])),  # type: ignore[arg-type]
        _task(sha="1" * 64),
        results,
    )
    second = fetch_into(
        ResultSource(_zip(tmp_path / "2.zip", [("outputs/only-in-second.txt", b"2")])),  # type: ignore[arg-type]
        _task(sha="2" * 64),
        results,
    )
    assert first.folder != second.folder
    assert sorted(p.name for p in (first.folder / "outputs").iterdir()) == ["only-in-first.txt"]
    assert sorted(p.name for p in (second.folder / "outputs").iterdir()) == ["only-in-second.txt"]
    # Each is found again as itself.
    assert fetch_into(ResultSource(b""), _task(sha="1" * 64), results).folder == first.folder  # type: ignore[arg-type]
    assert fetch_into(ResultSource(b""), _task(sha="2" * 64), results).folder == second.folder  # type: ignore[arg-type]


def test_a_result_cannot_forge_the_fetch_record(tmp_path: Path) -> None:
    """The record a result folder is recognised by is written by the fetch, over whatever the
    result carried under that name."""
    forged = json.dumps({"task_id": "t-someone-else", "result_sha256": "f" * 64, "renamed": {}}).encode()
    data = _zip(tmp_path / "f.zip", [(FETCH_RECORD, forged)])
    fetched = fetch_into(ResultSource(data), _task(), tmp_path / "results")  # type: ignore[arg-type]
    record = json.loads((fetched.folder / FETCH_RECORD).read_text())
    assert record["task_id"] == "t-0123456789ab" and record["result_sha256"] == "a" * 64


def test_the_executed_notebook_is_named_after_the_task(tmp_path: Path) -> None:
    """Two results of `main.ipynb` cells open as two tabs that say which task each is."""
    task = _task()
    task.manifest.name = "analysis.ipynb [4]"
    fetched = fetch_into(ResultSource(_zip(tmp_path / "r.zip", [])), task, tmp_path / "results")  # type: ignore[arg-type]
    assert fetched.notebook == fetched.folder / "analysis [4] - t-0123456789ab.ipynb"
    assert not (fetched.folder / "main.ipynb").exists()
    other = _task(task_id="t-ba9876543210")
    other.manifest.name = "analysis.ipynb [4]"
    second = fetch_into(ResultSource(_zip(tmp_path / "s.zip", [])), other, tmp_path / "results")  # type: ignore[arg-type]
    assert second.notebook is not None and fetched.notebook.name != second.notebook.name
    # found again under its new name
    assert fetch_into(ResultSource(b""), task, tmp_path / "results").notebook == fetched.notebook  # type: ignore[arg-type]


def test_a_cell_keeps_only_what_was_asked_for(tmp_path: Path) -> None:
    """No outputs and success: nothing is written beside the notebook. Outputs: only they stay;
    the whole result, fetched later, fills in the rest and replaces nothing."""
    results = tmp_path / "results"
    plain = fetch_into(ResultSource(_zip(tmp_path / "p.zip", [])), _task(), tmp_path / "tmp1")  # type: ignore[arg-type]
    assert keep_asked_for(plain, _task(), results, notebook=False) is None
    assert not results.exists()

    data = _zip(tmp_path / "o.zip", [("outputs/plot.png", b"png"), (".hivemind/result.json", b"{}")])
    fetched = fetch_into(ResultSource(data), _task(), tmp_path / "tmp2")  # type: ignore[arg-type]
    kept = keep_asked_for(fetched, _task(), results, notebook=False)
    assert kept is not None and kept.notebook is None
    assert sorted(_tree(kept.folder)) == [".hivemind", FETCH_RECORD, "outputs", "outputs/plot.png"]
    (kept.folder / "outputs" / "plot.png").write_bytes(b"the user's edit")
    source = ResultSource(data)
    whole = fetch_into(source, _task(), results)  # type: ignore[arg-type]
    assert whole.folder == kept.folder and source.fetches == 1
    assert whole.notebook == kept.folder / "job - t-0123456789ab.ipynb"
    assert (kept.folder / "outputs" / "plot.png").read_bytes() == b"the user's edit"
    assert (kept.folder / ".hivemind" / "result.json").is_file()
    assert fetch_into(source, _task(), results).folder == kept.folder and source.fetches == 1  # whole now


def test_a_failed_cell_keeps_its_executed_notebook(tmp_path: Path) -> None:
    fetched = fetch_into(ResultSource(_zip(tmp_path / "f.zip", [])), _task(), tmp_path / "tmp")  # type: ignore[arg-type]
    kept = keep_asked_for(fetched, _task(), tmp_path / "results", notebook=True)
    assert kept is not None and kept.notebook == kept.folder / "job - t-0123456789ab.ipynb"
    assert kept.notebook.read_bytes() == NOTEBOOK


def test_fetch_to_wants_a_new_or_empty_folder(tmp_path: Path) -> None:
    data = _zip(tmp_path / "r.zip", [("outputs/a.txt", b"a")])
    (tmp_path / "empty").mkdir()
    fetched = fetch_to(ResultSource(data), _task(), tmp_path / "empty")  # type: ignore[arg-type]
    assert (fetched.folder / "outputs" / "a.txt").read_bytes() == b"a"
    assert fetched.notebook == fetched.folder / "job - t-0123456789ab.ipynb"
    with pytest.raises(InvalidInput, match="not empty"):
        fetch_to(ResultSource(data), _task(), tmp_path / "empty")  # type: ignore[arg-type]
