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
user's, another result), the next free `<name>-<id>-2`, `-3`, ... is used instead. The executed
notebook is named after the task (protocol/result_notebook.py), so two result tabs differ.

A `%%hivemind` cell keeps only what its user asked for (`keep_asked_for`): the output files, the
executed notebook when the task did not succeed. Such a folder is marked partial in its record;
fetching the whole result later (the panel, `handle.fetch()`) fills in the rest beside what is
there, never replacing a file.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import pickle
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
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
from hivemind_nodepool.protocol.errors import BundleError, Conflict, InvalidInput
from hivemind_nodepool.protocol.result_notebook import name_result_notebook
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


def _find_notebook(folder: Path, task: pb.Task, record: dict[str, Any]) -> Path | None:
    """The executed notebook: as the record names it (renamed after the task), else the entry's."""
    name = task.manifest.entry_notebook
    name = _renames(record.get("renamed")).get(name, name)
    for candidate in (record.get("notebook"), name):
        entry = folder / candidate if isinstance(candidate, str) and candidate else None
        if entry is not None and not entry.is_symlink() and entry.is_file():
            return entry
    if record.get("whole") is False:  # a partial folder holds a notebook only when it was kept
        return None
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
    record = _read_json(folder / FETCH_RECORD)
    renamed = _renames(record.get("renamed"))
    if renamed:
        for old, new in renamed.items():
            log.info("result of %s: %r was renamed to %r", task.id, old, new)
    return FetchedResult(folder, _find_notebook(folder, task, record), _listing(folder), renamed)


def _is_whole(folder: Path) -> bool:
    return _read_json(folder / FETCH_RECORD).get("whole") is not False


def _write_record(
    folder: Path, task: pb.Task, renamed: dict[str, str], notebook: str | None, whole: bool
) -> None:
    internal = folder / INTERNAL_PREFIX
    if internal.is_symlink() or (internal.exists() and not internal.is_dir()):
        raise BundleError("the result's .hivemind entry is not a folder")
    internal.mkdir(exist_ok=True)
    target = folder / FETCH_RECORD
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)
    document = {
        "task_id": task.id,
        "result_sha256": task.result_sha256,
        "renamed": renamed,
        "notebook": notebook,
        "whole": whole,
    }
    target.write_text(json.dumps(document, indent=1))


def _prepare(task: pb.Task) -> Callable[[Path, Unpacked], None]:
    """What is done to a result in its staging folder: the executed notebook named after the task,
    renames and that name recorded."""

    def prepare(folder: Path, unpacked: Unpacked) -> None:
        # Names the worker had to store differently (not UTF-8 there) are renames too.
        renamed = {**unpacked.renamed, **worker_renames(folder)}
        entry = task.manifest.entry_notebook
        notebook = name_result_notebook(folder, renamed.get(entry, entry), task.manifest.name, task.id)
        _write_record(folder, task, renamed, notebook, whole=True)

    return prepare


def _fill_in(staged: Path, partial: Path) -> None:
    """Move what a partial folder lacks from the whole result beside it; nothing there is replaced."""
    for path in sorted(staged.rglob("*")):
        if path.is_dir() or path.is_symlink():
            continue
        relative = path.relative_to(staged)
        target = partial / relative
        if relative.as_posix() == FETCH_RECORD or not (target.exists() or target.is_symlink()):
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
            except OSError as exc:  # a file of the user's where a folder would go: keep theirs
                log.info("%s was not filled in: %s", target, exc)


def _free_folder(results_root: Path, task: pb.Task) -> Path:
    """results_root/<name>-<id>, or the next free -2, -3, ... when taken by something else; a
    folder already holding this result is returned as it is."""
    base = folder_name(task)
    final = results_root / base
    for number in range(2, 1000):
        if (not final.exists() and not final.is_symlink()) or _is_this_result(final, task):
            return final
        final = results_root / f"{base}-{number}"  # taken by something else: never merged into
    raise Conflict(f"no free folder for the result of {task.id} under {results_root}")


def _unpack(
    client: PoolClient, task: pb.Task, final: Path, limits: BundleLimits, names: LocalNames, *, partial: bool
) -> None:
    """Download the result and unpack it whole into final: a new (or empty) folder, or, when
    `partial`, a partial one of this result, which is filled in."""
    if not task.result_sha256:
        raise Conflict(f"task {task.id} has no result yet (it is {state_name(task.state)})")
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{task.id}-", dir=final.parent) as staging:
        archive = client.fetch_result(task.id, Path(staging) / "result.zip")
        target = Path(staging) / "whole" if partial else final
        try:
            extract_new_folder(archive, target, limits, names, prepare=_prepare(task))
        except (BundleError, OSError):
            if partial or not _is_this_result(final, task):  # not a concurrent fetch that won
                raise
            return
        if partial:
            _fill_in(target, final)


def fetch_into(
    client: PoolClient,
    task: pb.Task,
    results_root: Path,
    limits: BundleLimits = BundleLimits(),
    names: LocalNames = LocalNames(),
) -> FetchedResult:
    """Download and unpack the task's whole result under results_root/<name>-<id>/ (idempotent)."""
    final = _free_folder(results_root, task)
    if not final.exists() or not _is_whole(final):
        _unpack(client, task, final, limits, names, partial=final.exists())
    return _result(final, task)


def fetch_to(
    client: PoolClient,
    task: pb.Task,
    target: Path,
    limits: BundleLimits = BundleLimits(),
    names: LocalNames = LocalNames(),
) -> FetchedResult:
    """Download and unpack the task's whole result into target, a new or empty folder."""
    if target.is_symlink() or (target.exists() and (not target.is_dir() or any(target.iterdir()))):
        raise InvalidInput(f"{target} exists and is not empty; choose a new folder")
    _unpack(client, task, target, limits, names, partial=False)
    return _result(target, task)


def keep_asked_for(
    fetched: FetchedResult, task: pb.Task, results_root: Path, notebook: bool
) -> FetchedResult | None:
    """Keep, under results_root/<name>-<id>/, only what a cell's user asked for: its output files,
    and the executed notebook when `notebook` (the task did not succeed). None when that is nothing:
    then nothing is written, and the whole result stays on the pool to be fetched on demand."""
    wanted = [p for p in public_files(fetched) if p != fetched.notebook]
    if notebook and fetched.notebook is not None:
        wanted.append(fetched.notebook)
    if not wanted:
        return None
    final = _free_folder(results_root, task)
    if final.exists():  # kept (or fetched whole) before
        return _result(final, task)
    results_root.mkdir(parents=True, exist_ok=True)
    staging = results_root / f".{task.id}-{uuid.uuid4().hex[:8]}"
    try:
        for path in wanted:
            target = staging / path.relative_to(fetched.folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        kept = None
        if notebook and fetched.notebook is not None:
            kept = fetched.notebook.relative_to(fetched.folder).as_posix()
        _write_record(staging, task, fetched.renamed, kept, whole=False)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
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


# pyarrow before 14.0.1 could run code from a crafted file (CVE-2023-47248).
MIN_PYARROW = (14, 0, 1)
PICKLE_HINT = (
    "pickles can run code in this kernel, so they are loaded only on request: "
    "add --pull-pickle, or list the pool in c.HiveMind.trusted_pools, if you trust its workers"
)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _npy(entry: dict[str, Any]) -> Any:
    try:
        import numpy
    except ImportError:
        raise ValueError("it is a numpy value, and numpy is not installed in this kernel") from None
    array = numpy.load(io.BytesIO(base64.b64decode(entry["npy"], validate=True)), allow_pickle=False)
    return array[()] if entry.get("scalar") else array


def _parquet(entry: dict[str, Any]) -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ValueError(
            "it is a pandas value sent as Parquet; install pyarrow in this kernel to read it"
        ) from None
    if _version(pyarrow.__version__) < MIN_PYARROW:
        raise ValueError(f"pyarrow {pyarrow.__version__} is too old to read it safely; use 14.0.1 or newer")
    table = pyarrow.parquet.read_table(io.BytesIO(base64.b64decode(entry["parquet"], validate=True)))
    frame = table.to_pandas()
    if not entry.get("series"):
        return frame
    series = frame.iloc[:, 0]
    series.name = entry.get("series_name")
    return series


def _plain(entry: dict[str, Any]) -> Any:
    if "float" in entry:
        if entry["float"] not in ("nan", "inf", "-inf"):
            raise ValueError("not a float")
        return float(entry["float"])
    data = base64.b64decode(entry["bytes"], validate=True)
    return bytearray(data) if entry.get("bytearray") else data


def _decode(entry: dict[str, Any], allow_pickle: bool) -> Any:
    """One pulled value from its entry; ValueError says why it cannot be read here."""
    if "json" in entry:
        return entry["json"]
    if "float" in entry or "bytes" in entry:
        return _plain(entry)
    if "npy" in entry:
        return _npy(entry)
    if "parquet" in entry:
        return _parquet(entry)
    if "pickle" in entry:
        if not allow_pickle:
            why = f"{entry['safe_error']}; " if entry.get("safe_error") else ""
            raise ValueError(
                f"it is a {entry.get('type', '?')}, which comes back only pickled ({why}{PICKLE_HINT})"
            )
        return pickle.loads(base64.b64decode(entry["pickle"], validate=True))  # noqa: S301 - opted in
    error = str(entry.get("error") or "did not come back")
    raise ValueError(f"{entry['safe_error']} ({error})" if entry.get("safe_error") else error)


def load_pulled(
    folder: Path, names: Iterable[str], allow_pickle: bool = False
) -> tuple[dict[str, Any], dict[str, str]]:
    """(values, problems): the variables the task sent back, of those asked for, and why others
    did not come.

    The worker that ran the task may belong to someone else, so by default only forms that cannot
    run code are read: JSON, bytes, numpy's .npy (allow_pickle=False) and Parquet (pyarrow). A
    pickle is loaded only when allow_pickle says the user trusts the pool's workers. Nothing is
    read when nothing was asked for, and names that were not asked for are ignored.
    """
    wanted = list(dict.fromkeys(names))
    path = folder / VARIABLES_FILE
    if not wanted:
        return {}, {}
    if not path.is_file():
        return {}, dict.fromkeys(wanted, "the result holds no variables")
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        return {}, dict.fromkeys(wanted, f"the variables file is unreadable: {exc}")
    if not isinstance(payload, dict):
        payload = {}
    values: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for name in wanted:
        entry = payload.get(name)
        if not isinstance(entry, dict):
            problems[name] = "did not come back"
            continue
        try:
            values[name] = _decode(entry, allow_pickle)
        except Exception as exc:  # a hostile or damaged entry must not stop the others
            problems[name] = str(exc) if isinstance(exc, ValueError) else f"cannot be read here: {exc!r}"
    return values, problems


def joined_mime_bundle(data: dict[str, Any]) -> dict[str, Any]:
    """nbformat stores text as lists of lines; display wants one string (JSON types stay as they are)."""
    return {
        mime: "".join(value) if isinstance(value, list) and not mime.endswith("json") else value
        for mime, value in data.items()
    }


# What a worker's output may show in the user's browser when its pool is not trusted: what
# JupyterLab shows of an untrusted notebook. JavaScript and other executable types are dropped;
# HTML and Markdown are sanitised. Images render through <img>, where SVG cannot run script.
SAFE_MIME_TYPES = frozenset(
    {
        "text/plain",
        "text/html",
        "text/markdown",
        "text/latex",
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/bmp",
        "image/svg+xml",
        "application/json",
        "application/pdf",
    }
)
_HTML_ATTRIBUTES = {"*": {"class", "style", "title", "lang", "dir"}, "table": {"border"}}
_STYLE_PROPERTIES = {
    "color",
    "background-color",
    "text-align",
    "vertical-align",
    "font-weight",
    "font-style",
    "font-size",
    "font-family",
    "text-decoration",
    "white-space",
    "width",
    "height",
    "max-width",
    "min-width",
    "border",
    "border-collapse",
    "border-color",
    "border-style",
    "border-width",
    "border-top",
    "border-bottom",
    "border-left",
    "border-right",
    "padding",
    "padding-top",
    "padding-bottom",
    "padding-left",
    "padding-right",
    "margin",
    "margin-top",
    "margin-bottom",
    "margin-left",
    "margin-right",
}
# Markdown links and images whose target is a scheme that runs or embeds a document.
_MARKDOWN_BAD_TARGET = re.compile(
    r"(\]\(\s*<?|^\s*\[[^\]]*\]:\s*<?)\s*(javascript|vbscript|data|file):", re.I | re.M
)


def _keep_attribute(tag: str, attribute: str, value: str) -> str | None:
    """data: URLs may show an image, never be a link target (a document of the worker's making)."""
    if attribute == "href" and value.strip().lower().startswith("data:"):
        return None
    return value


def sanitize_html(text: str) -> str:
    """HTML without script, event handlers, frames, forms or javascript: URLs (nh3, i.e. ammonia)."""
    import nh3

    tags = set(nh3.ALLOWED_TAGS)
    attributes = {tag: set(names) for tag, names in nh3.ALLOWED_ATTRIBUTES.items()}
    for tag, names in _HTML_ATTRIBUTES.items():
        attributes.setdefault(tag, set()).update(names)
    return nh3.clean(
        text,
        tags=tags,
        attributes=attributes,
        attribute_filter=_keep_attribute,
        url_schemes={"http", "https", "mailto", "data"},
        filter_style_properties=_STYLE_PROPERTIES,
    )


def sanitize_markdown(text: str) -> str:
    """Markdown whose embedded HTML is sanitised and whose links cannot run script."""
    if "<" in text:
        text = sanitize_html(text)
    return _MARKDOWN_BAD_TARGET.sub(lambda m: m.group(1) + "unsafe-", text)


def untrusted_bundle(
    data: dict[str, Any], metadata: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """An output from a worker the user does not trust, made safe to show (None: nothing to show)."""
    joined = joined_mime_bundle(data)
    kept: dict[str, Any] = {}
    for mime, value in joined.items():
        if mime not in SAFE_MIME_TYPES:
            continue
        if mime == "text/html":
            kept[mime] = sanitize_html(value) if isinstance(value, str) else ""
        elif mime == "text/markdown":
            kept[mime] = sanitize_markdown(value) if isinstance(value, str) else ""
        else:
            kept[mime] = value
    dropped = sorted(set(joined) - set(kept))
    if dropped:
        log.info("not shown from an untrusted pool's worker: %s", ", ".join(dropped))
    if not kept and not dropped:
        return None
    if dropped and set(kept) <= {"text/plain"}:  # nothing else shows it: say why
        note = (
            f"[hivemind] not shown: {', '.join(dropped)} from the worker "
            "(the pool is not in c.HiveMind.trusted_pools)"
        )
        plain = kept.get("text/plain")
        kept["text/plain"] = f"{plain}\n{note}" if isinstance(plain, str) and plain else note
    meta = {key: value for key, value in metadata.items() if key not in dropped}
    return kept, meta


def display_bundle(
    data: dict[str, Any], metadata: dict[str, Any], trusted: bool
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """What to publish for a worker's output: as it is from a trusted pool, else made safe."""
    if trusted:
        return joined_mime_bundle(data), metadata
    return untrusted_bundle(data, metadata)


def show_outputs(
    outputs: list[dict[str, Any]],
    publish: Callable[[dict[str, Any], dict[str, Any]], None],
    write_stream: Callable[[str, str], None] | None = None,
    trusted: bool = False,
) -> int:
    """Show rich outputs (and streams when write_stream is given) as if produced here, made safe
    unless the pool is trusted; returns how many were shown."""
    shown = 0
    for output in outputs:
        kind = output.get("output_type")
        if kind in ("display_data", "execute_result"):
            data, metadata = output.get("data"), output.get("metadata")
            bundle = display_bundle(
                data if isinstance(data, dict) else {},
                metadata if isinstance(metadata, dict) else {},
                trusted,
            )
            if bundle is not None:
                publish(*bundle)
            shown += 1
        elif kind == "stream" and write_stream is not None:
            text = output.get("text", "")
            write_stream(output.get("name", "stdout"), "".join(text) if isinstance(text, list) else text)
            shown += 1
    return shown
