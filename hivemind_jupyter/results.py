"""A finished task's result: fetched into the workspace safely, read back, shown as if local.

The result ZIP (laid out by the worker, see hivemind_worker/results.py) holds the executed entry
notebook, the files under the manifest's output patterns and `.hivemind/` (result.json, and
variables.json with the pulled variables). It is unpacked with the bundle module's
checks (no absolute paths, no `..`, no links or devices, capped count and sizes, bytes counted while
unpacking) into a temporary folder that is then renamed into place, so a result folder either exists
whole or not at all. Names this filesystem cannot hold are renamed, and the renames are reported
(`FetchedResult.renamed`) and kept in `.hivemind/fetched.json`.

Each result gets a folder of its own, `<name>-<id>`, and is never unpacked into a folder that holds
anything else: when that name is taken by something that is not this result (a folder of the
user's, another result), the next free `<name>-<id>-2`, `-3`, ... is used instead.
"""

from __future__ import annotations

import base64
import json
import logging
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hivemind_nodepool.client import PoolClient
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.bundle import (
    RESULT_META,
    BundleLimits,
    LocalNames,
    Unpacked,
    extract_new_folder,
    worker_renames,
)
from hivemind_nodepool.protocol.errors import BundleError, Conflict
from hivemind_nodepool.protocol.states import state_name

from .packaging import TAG_CELL

log = logging.getLogger(__name__)

INTERNAL_PREFIX = ".hivemind/"
VARIABLES_FILE = ".hivemind/variables.json"
FETCH_RECORD = ".hivemind/fetched.json"
MAX_RECORD_BYTES = 16 * 1024 * 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class FetchedResult:
    folder: Path
    notebook: Path | None
    files: list[Path] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)  # name in the result -> name written


def folder_name(task: pb.Task) -> str:
    """'<name>-<id>' made safe for a file name."""
    name = _UNSAFE.sub("-", task.manifest.name or "task").strip(".-")[:80] or "task"
    return f"{name}-{_UNSAFE.sub('-', task.id)}"


def _listing(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _find_notebook(folder: Path, task: pb.Task, renamed: dict[str, str] | None = None) -> Path | None:
    name = task.manifest.entry_notebook
    name = (renamed or {}).get(name, name)
    entry = folder / name if name else None
    if entry is not None and entry.is_file():
        return entry
    found = sorted(folder.glob("*.ipynb")) or sorted(folder.rglob("*.ipynb"))
    return found[0] if found else None


def _read_json(path: Path) -> dict[str, Any]:
    """A small JSON object the result carries, or {} (never through a link, never huge)."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_RECORD_BYTES:
            return {}
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_this_result(folder: Path, task: pb.Task) -> bool:
    """Whether folder holds this task's result, fetched earlier (by its record, or, for a folder
    fetched before records were kept, by the task id the worker wrote into result.json)."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    record = _read_json(folder / FETCH_RECORD)
    if record:
        return record.get("task_id") == task.id and record.get("result_sha256") == task.result_sha256
    return _read_json(folder / RESULT_META).get("task_id") == task.id


def _renames(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _result(folder: Path, task: pb.Task) -> FetchedResult:
    renamed = _renames(_read_json(folder / FETCH_RECORD).get("renamed"))
    if renamed:
        for old, new in renamed.items():
            log.info("result of %s: %r was renamed to %r", task.id, old, new)
    return FetchedResult(folder, _find_notebook(folder, task, renamed), _listing(folder), renamed)


def fetch_into(
    client: PoolClient,
    task: pb.Task,
    results_root: Path,
    limits: BundleLimits = BundleLimits(),
    names: LocalNames = LocalNames(),
) -> FetchedResult:
    """Download and unpack the task's result under results_root/<name>-<id>/ (idempotent)."""
    base = folder_name(task)
    final = results_root / base
    for number in range(2, 1000):
        if not final.exists() and not final.is_symlink():
            break
        if _is_this_result(final, task):
            return _result(final, task)
        final = results_root / f"{base}-{number}"  # taken by something else: never merged into
    else:
        raise Conflict(f"no free folder for the result of {task.id} under {results_root}")
    if not task.result_sha256:
        raise Conflict(f"task {task.id} has no result yet (it is {state_name(task.state)})")
    results_root.mkdir(parents=True, exist_ok=True)

    def record(folder: Path, unpacked: Unpacked) -> None:
        # Names the worker had to store differently (not UTF-8 there) are renames too.
        renamed = {**unpacked.renamed, **worker_renames(folder)}
        internal = folder / INTERNAL_PREFIX
        if internal.is_symlink() or (internal.exists() and not internal.is_dir()):
            raise BundleError("the result's .hivemind entry is not a folder")
        internal.mkdir(exist_ok=True)
        target = folder / FETCH_RECORD
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
        document = {"task_id": task.id, "result_sha256": task.result_sha256, "renamed": renamed}
        target.write_text(json.dumps(document, indent=1))

    with tempfile.TemporaryDirectory(prefix=f".{task.id}-", dir=results_root) as staging:
        archive = client.fetch_result(task.id, Path(staging) / "result.zip")
        try:
            extract_new_folder(archive, final, limits, names, prepare=record)
        except (BundleError, OSError):
            if not _is_this_result(final, task):  # a real failure, not a concurrent fetch that won
                raise
    return _result(final, task)


def public_files(result: FetchedResult) -> list[Path]:
    """The files a person cares about (HiveMind's own bookkeeping left out)."""
    return [
        p for p in result.files if not p.relative_to(result.folder).as_posix().startswith(INTERNAL_PREFIX)
    ]


def cell_outputs(notebook: Path) -> list[dict[str, Any]]:
    """The outputs of the user's code: the `hivemind-cell` cell, or every code cell of a notebook."""
    try:
        data = json.loads(notebook.read_text())
    except (OSError, ValueError) as exc:
        log.warning("cannot read the executed notebook %s: %s", notebook, exc)
        return []
    cells = [c for c in data.get("cells", []) if isinstance(c, dict) and c.get("cell_type") == "code"]
    tagged = [c for c in cells if TAG_CELL in (c.get("metadata", {}).get("tags") or [])]
    outputs: list[dict[str, Any]] = []
    for cell in tagged or cells:
        outputs.extend(o for o in cell.get("outputs", []) if isinstance(o, dict))
    return outputs


def error_traceback(outputs: list[dict[str, Any]]) -> list[str] | None:
    for output in outputs:
        if output.get("output_type") == "error":
            lines = output.get("traceback") or [f"{output.get('ename')}: {output.get('evalue')}"]
            return [str(line) for line in lines]
    return None


def load_pulled(folder: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(values, problems): the variables the task sent back, and why others did not come.

    A value travels pickled (and as JSON when it is JSON); the pickle is preferred. It is the
    user's own task's value, read through the pool, which only the task's owner can fetch.
    """
    path = folder / VARIABLES_FILE
    if not path.is_file():
        return {}, {}
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {}, {"*": f"the variables file is unreadable: {exc}"}
    values: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for name, entry in payload.items() if isinstance(payload, dict) else []:
        if not isinstance(entry, dict):
            continue
        if "pickle" in entry:
            try:
                values[name] = pickle.loads(base64.b64decode(entry["pickle"]))  # noqa: S301
                continue
            except Exception as exc:
                if "json" not in entry:
                    problems[name] = f"cannot be unpickled here ({entry.get('type', '?')}): {exc}"
                    continue
        if "json" in entry:
            values[name] = entry["json"]
        else:
            problems[name] = str(entry.get("error") or "did not come back")
    return values, problems


def joined_mime_bundle(data: dict[str, Any]) -> dict[str, Any]:
    """nbformat stores text as lists of lines; display wants one string (JSON types stay as they are)."""
    return {
        mime: "".join(value) if isinstance(value, list) and not mime.endswith("json") else value
        for mime, value in data.items()
    }


def show_outputs(
    outputs: list[dict[str, Any]],
    publish: Callable[[dict[str, Any], dict[str, Any]], None],
    write_stream: Callable[[str, str], None] | None = None,
) -> int:
    """Show rich outputs (and streams when write_stream is given) as if produced here; returns
    how many were shown."""
    shown = 0
    for output in outputs:
        kind = output.get("output_type")
        if kind in ("display_data", "execute_result"):
            publish(joined_mime_bundle(output.get("data") or {}), output.get("metadata") or {})
            shown += 1
        elif kind == "stream" and write_stream is not None:
            text = output.get("text", "")
            write_stream(output.get("name", "stdout"), "".join(text) if isinstance(text, list) else text)
            shown += 1
    return shown
