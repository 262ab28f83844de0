"""Turning a cell, a notebook or a folder into a task: its bundle ZIP and its manifest.

A cell becomes a notebook of up to three cells, each tagged so the result can be read back:
`hivemind-push` (loads the pushed variables, pickled into `_hivemind/push/NAME.pickle` in the
bundle), `parameters` (papermill's defaults) and `hivemind-cell` (the user's code). Pulled
variables are named in the manifest (`pull_variables`); the worker's runner reads them after the
notebook and returns them in the result as `.hivemind/variables.json`. See docs/internals.md.
"""

from __future__ import annotations

import json
import keyword
import pickle
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from hivemind_nodepool.client.environment import EnvironmentChoice, Sources, capture
from hivemind_nodepool.client.submission import DEFAULT_MAX_BUNDLE_BYTES, TaskRequest, package_path
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.bundle import MANIFEST_NAME, LeftOut, PackedBundle, pack, scan_folder
from hivemind_nodepool.protocol.errors import InvalidInput
from hivemind_nodepool.protocol.manifest import code_preview, to_json, validate

CELL_ENTRY = "main.ipynb"
PUSH_DIR = "_hivemind/push"
DEFAULT_OUTPUTS = ("outputs/**",)
TAG_PUSH = "hivemind-push"
TAG_PARAMETERS = "parameters"
TAG_CELL = "hivemind-cell"
MAX_REQUIREMENTS_BYTES = 1024 * 1024


def cell_task_name(session: str | None, execution_count: int | None) -> str:
    """What a cell's task is called without `--name`: its notebook and cell, as in `analysis.ipynb [4]`.

    `session` is the kernel's notebook path (`__session__`, from JPY_SESSION_NAME in recent
    ipykernel); only its last part is shown, so the name stays short in lists."""
    notebook = Path(session).name if session else ""
    count = f"[{execution_count}]" if isinstance(execution_count, int) and execution_count > 0 else ""
    return " ".join(part for part in (notebook, count) if part) or "cell"


def check_identifier(name: str, what: str = "variable") -> str:
    """A Python identifier that is not a keyword, or InvalidInput."""
    if not name.isidentifier() or keyword.iskeyword(name):
        raise InvalidInput(f"{name!r} is not a valid Python {what} name")
    if name.startswith("_hm_"):
        raise InvalidInput(f"{name!r}: names starting with _hm_ are reserved by HiveMind")
    return name


def spec_manifest(request: TaskRequest, entry: str) -> pb.Manifest:
    """The manifest for a request, checked as the pool will check it."""
    built = replace(request, outputs=tuple(request.outputs or DEFAULT_OUTPUTS)).to_manifest(entry)
    validate(built)
    return built


def _code_cell(source: str, tag: str) -> dict[str, Any]:
    return {
        "cell_type": "code",
        "execution_count": None,
        "id": tag,
        "metadata": {"tags": [tag]},
        "outputs": [],
        "source": source,
    }


def _push_source(names: list[str]) -> str:
    return (
        "# Variables sent from the calling notebook (--push).\n"
        "import pickle as _hm_pickle\n"
        f"for _hm_name in {names!r}:\n"
        f"    with open('{PUSH_DIR}/' + _hm_name + '.pickle', 'rb') as _hm_file:\n"
        "        globals()[_hm_name] = _hm_pickle.load(_hm_file)\n"
        "del _hm_pickle, _hm_name, _hm_file\n"
    )


def cell_notebook(
    code: str, parameters: Mapping[str, Any] | None = None, push: list[str] | None = None
) -> dict[str, Any]:
    """The notebook (nbformat 4 as a dict) that runs one cell on the pool."""
    cells: list[dict[str, Any]] = []
    if push:
        cells.append(_code_cell(_push_source(list(push)), TAG_PUSH))
    lines = ["# Parameters (papermill injects the task's values after this cell)."]
    for name, value in (parameters or {}).items():
        check_identifier(name, "parameter")
        lines.append(f"{name} = {value!r}")
    cells.append(_code_cell("\n".join(lines) + "\n", TAG_PARAMETERS))
    cells.append(_code_cell(code, TAG_CELL))
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
            "hivemind": {"generated": True},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def pickle_pushed(values: Mapping[str, Any]) -> dict[str, bytes]:
    """Bundle entries for pushed variables; InvalidInput names any that cannot be pickled."""
    entries: dict[str, bytes] = {}
    for name, value in values.items():
        check_identifier(name)
        try:
            entries[f"{PUSH_DIR}/{name}.pickle"] = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise InvalidInput(
                f"cannot send variable {name!r} with --push: it cannot be pickled ({exc})"
            ) from None
    return entries


def read_requirements(path: Path) -> bytes:
    if not path.is_file():
        raise InvalidInput(f"requirements file {path} does not exist")
    if path.stat().st_size > MAX_REQUIREMENTS_BYTES:
        raise InvalidInput(f"requirements file {path} is larger than 1 MiB")
    return path.read_bytes()


def _folder_files(folder: Path | None) -> tuple[list[tuple[str, Path]], list[LeftOut]]:
    """The --dir folder's files to send, and the secrets left out of them."""
    if folder is None:
        return [], []
    if not folder.is_dir():
        raise InvalidInput(f"--dir {folder}: not a folder")
    scan = scan_folder(folder)
    return [(name, path) for name, path, _ in scan.files], scan.left_out


def pack_cell(
    code: str,
    request: TaskRequest,
    destination: Path,
    *,
    folder: Path | None = None,
    requirements: Path | None = None,
    push: Mapping[str, Any] | None = None,
    max_bytes: int = DEFAULT_MAX_BUNDLE_BYTES,
    environment: EnvironmentChoice | None = None,
) -> tuple[pb.Manifest, PackedBundle]:
    """A cell (plus an optional folder) as a bundle at destination, and its manifest; the folder's
    secrets are left out and named in the bundle's `left_out`. With an `environment` choice the
    cell's environment is captured into the manifest and the bundle, and the lines that say what
    it is are the bundle's `notices`."""
    files, left_out = _folder_files(folder)
    taken = {name for name, _ in files}
    entry = CELL_ENTRY
    counter = 1
    while entry in taken:
        entry = f"main-hivemind-{counter}.ipynb"
        counter += 1
    push_values = dict(push or {})
    manifest = spec_manifest(replace(request, name=request.name or "cell"), entry)
    manifest.code_preview = code_preview(code)
    notebook = cell_notebook(code, dict(request.parameters or {}), sorted(push_values))
    extra = {entry: json.dumps(notebook, indent=1).encode()}
    extra.update(pickle_pushed(push_values))
    if requirements is not None:
        extra["requirements.txt"] = read_requirements(requirements)
    notices: list[str] = []
    if environment is not None:
        sources = Sources(
            code=[code],
            files=files,
            names=[name for name, _ in files] + list(extra),
            values=list(push_values.values()),
        )
        captured = capture(environment, sources, request.gpus, max_bytes)
        manifest.environment.CopyFrom(captured.environment)
        extra.update(captured.entries)
        notices = captured.notices
    extra[MANIFEST_NAME] = to_json(manifest).encode()
    packed = pack(destination, files, extra, max_bytes=max_bytes)
    packed.left_out = left_out
    packed.notices = notices
    return manifest, packed


def pack_path(
    target: Path,
    request: TaskRequest,
    workdir: Path,
    *,
    entry: str | None = None,
    max_bytes: int = DEFAULT_MAX_BUNDLE_BYTES,
    requirements: str | None = None,
    environment: EnvironmentChoice | None = None,
) -> tuple[pb.Manifest, PackedBundle]:
    """A notebook (sent with its folder) or a folder (with its entry notebook), as `hivemind submit`
    packages it; the entry must be a notebook inside the folder. `requirements` (pip lines, as
    typed in the panel's dialog) becomes the bundle's requirements.txt; `environment` is captured
    or taken as chosen (its lines to show are the bundle's `notices`)."""
    if entry is not None and not target.is_dir():
        raise InvalidInput("give `entry` only with a folder")
    placeholder = target.name if target.is_file() else "entry.ipynb"
    validate(request.to_manifest(entry or placeholder))  # bad requests fail before any packing
    extra: dict[str, bytes] = {}
    if requirements and requirements.strip():
        data = requirements.strip().encode() + b"\n"
        if len(data) > MAX_REQUIREMENTS_BYTES:
            raise InvalidInput("the requirements are larger than 1 MiB")
        extra["requirements.txt"] = data
    manifest, packed = package_path(
        target,
        request,
        entry=entry,
        workdir=workdir,
        max_bytes=max_bytes,
        how_to_choose='the "entry" field',
        extra=extra,
        environment=environment,
    )
    validate(manifest)
    return manifest, packed
