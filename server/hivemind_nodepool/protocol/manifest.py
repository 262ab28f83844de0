"""What a task asks for: validation of a pb.Manifest, defaults, and its JSON form (`hivemind.json`).

The pool validates every manifest it accepts; the Jupyter side and the CLI build manifests from
their options or from a bundle's `hivemind.json` with the same functions, so a mistake is caught
with the same message before anything is uploaded.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from google.protobuf import json_format

from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.errors import InvalidInput
from hivemind_nodepool.protocol.jsonify import to_dict

MAX_CPUS = 1024.0
MAX_MEMORY = 16 * 1024**4  # 16 TiB
MAX_GPUS = 64
MAX_DISK = 1024**5  # 1 PiB
MAX_NAME = 200
MAX_PARAMETERS_JSON = 1024 * 1024
MAX_LABELS = 32
MAX_OUTPUTS = 64
MAX_PULL_VARIABLES = 64
MAX_RETRIES = 10
MAX_PRIORITY = 1000
MAX_CODE_PREVIEW = 2048  # bytes of UTF-8: enough for a list's glance, small in every Task
DEFAULT_OUTPUTS = ("outputs/**",)
LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
LABEL_VALUE = re.compile(r"^[A-Za-z0-9._:/=+-]{0,128}$")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")


def _check_pattern(pattern: str) -> None:
    if not pattern or len(pattern) > 256:
        raise InvalidInput("an output pattern must be 1-256 characters")
    if pattern.startswith("/") or "\\" in pattern or "\x00" in pattern:
        raise InvalidInput(f"output pattern {pattern!r} must be a relative path with '/' separators")
    if any(part == ".." for part in pattern.split("/")):
        raise InvalidInput(f"output pattern {pattern!r} may not climb out with '..'")


def _check_name(name: str) -> None:
    if len(name) > MAX_NAME:
        raise InvalidInput(f"the task name is longer than {MAX_NAME} characters")
    if any(ord(c) < 32 for c in name):
        raise InvalidInput("the task name contains control characters")


def _check_entry(entry: str) -> None:
    if not entry:
        raise InvalidInput("the manifest names no entry notebook")
    if not entry.endswith(".ipynb"):
        raise InvalidInput(f"the entry notebook {entry!r} is not a .ipynb file")
    if (
        entry.startswith("/")
        or "\\" in entry
        or any(p == ".." for p in entry.split("/"))
        or len(entry) > 1024
    ):
        raise InvalidInput(f"the entry notebook {entry!r} must be a relative path inside the bundle")


def _check_parameters(parameters_json: str) -> None:
    if not parameters_json:  # empty: no parameters (the pool stores "{}")
        return
    if len(parameters_json) > MAX_PARAMETERS_JSON:
        raise InvalidInput(f"the parameters are larger than {MAX_PARAMETERS_JSON} bytes")
    try:
        params = json.loads(parameters_json)
    except ValueError as exc:
        raise InvalidInput(f"the parameters are not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise InvalidInput("the parameters must be a JSON object (name -> value)")
    for key in params:
        if not IDENTIFIER.match(key):
            raise InvalidInput(f"parameter name {key!r} is not a Python identifier")


def _check_resources(res: pb.Resources) -> None:
    if not math.isfinite(res.cpus) or res.cpus < 0:
        raise InvalidInput(f"cpus must be a non-negative number, not {res.cpus}")
    if res.cpus > MAX_CPUS:
        raise InvalidInput(f"cpus {res.cpus:g} is more than any machine has (limit {MAX_CPUS:g})")
    if res.memory_bytes < 0:
        raise InvalidInput("memory cannot be negative")
    if res.memory_bytes > MAX_MEMORY:
        raise InvalidInput("memory above 16 TiB is not a sane request")
    if res.gpus < 0:
        raise InvalidInput("gpus cannot be negative")
    if res.gpus > MAX_GPUS:
        raise InvalidInput(f"gpus {res.gpus} is more than any machine has (limit {MAX_GPUS})")
    if res.disk_bytes < 0:
        raise InvalidInput("disk cannot be negative (0 means the worker's limit)")
    if res.disk_bytes > MAX_DISK:
        raise InvalidInput("disk above 1 PiB is not a sane request")


def _check_labels(labels: Mapping[str, str]) -> None:
    if len(labels) > MAX_LABELS:
        raise InvalidInput(f"at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if not LABEL_KEY.match(key):
            raise InvalidInput(f"label name {key!r} is not allowed (letters, digits, . _ / -)")
        if not LABEL_VALUE.match(value):
            raise InvalidInput(f"label value {value!r} for {key!r} is not allowed")


def _check_timeout(timeout_seconds: int, max_timeout: float | None) -> None:
    if timeout_seconds < 0:
        raise InvalidInput("the timeout cannot be negative (0 means the pool's default)")
    if max_timeout is not None and timeout_seconds > max_timeout:
        raise InvalidInput(
            f"the timeout {timeout_seconds} s is longer than the pool allows ({int(max_timeout)} s)"
        )


def _check_retries(max_retries: int) -> None:
    if max_retries < -1 or max_retries > MAX_RETRIES:
        raise InvalidInput(f"max_retries must be between 0 and {MAX_RETRIES} (-1: the pool's default)")


def _check_outputs(outputs: Sequence[str]) -> None:
    if len(outputs) > MAX_OUTPUTS:
        raise InvalidInput(f"at most {MAX_OUTPUTS} output patterns")
    for pattern in outputs:
        _check_pattern(pattern)


def _check_pull_variables(names: Sequence[str]) -> None:
    if len(names) > MAX_PULL_VARIABLES:
        raise InvalidInput(f"at most {MAX_PULL_VARIABLES} variables to pull")
    for name in names:
        if not IDENTIFIER.match(name):
            raise InvalidInput(f"variable name {name!r} is not a Python identifier")


def _check_priority(priority: int) -> None:
    if abs(priority) > MAX_PRIORITY:
        raise InvalidInput(f"priority must be between -{MAX_PRIORITY} and {MAX_PRIORITY}")


def _check_code_preview(preview: str) -> None:
    if len(preview.encode()) > MAX_CODE_PREVIEW:
        raise InvalidInput(f"the code preview is longer than {MAX_CODE_PREVIEW} bytes")


def code_preview(code: str, max_lines: int = 12) -> str:
    """The first lines of some code, cut to fit the manifest's preview (at most MAX_CODE_PREVIEW)."""
    lines = code.strip("\n").splitlines()
    text = "\n".join(lines[:max_lines]) + ("\n…" if len(lines) > max_lines else "")
    data = text.encode()
    if len(data) <= MAX_CODE_PREVIEW:
        return text
    return data[: MAX_CODE_PREVIEW - 4].decode(errors="ignore") + "\n…"


def validate(manifest: pb.Manifest, max_timeout: float | None = None) -> None:
    """Every field checked; the first problem raises InvalidInput with a message that names it.

    The parts are checked in the order of the proto's fields, so which problem is reported first
    stays the same."""
    _check_name(manifest.name)
    _check_entry(manifest.entry_notebook)
    _check_parameters(manifest.parameters_json)
    _check_resources(manifest.resources)
    _check_labels(manifest.labels)
    _check_timeout(manifest.timeout_seconds, max_timeout)
    _check_retries(manifest.max_retries)
    _check_outputs(manifest.outputs)
    _check_pull_variables(manifest.pull_variables)
    _check_priority(manifest.priority)
    _check_code_preview(manifest.code_preview)


def check_entry_present(manifest: pb.Manifest, files: Iterable[str]) -> None:
    names = set(files)
    if manifest.entry_notebook not in names:
        shown = sorted(n for n in names if n.endswith(".ipynb"))[:5]
        hint = f"; notebooks in the bundle: {', '.join(shown)}" if shown else "; the bundle has no notebooks"
        raise InvalidInput(f"the entry notebook {manifest.entry_notebook!r} is not in the bundle{hint}")


def with_defaults(manifest: pb.Manifest, default_timeout: float, default_retries: int) -> pb.Manifest:
    """A copy with the pool's defaults filled in, as stored and handed to workers."""
    filled = pb.Manifest()
    filled.CopyFrom(manifest)
    if not filled.name:
        filled.name = filled.entry_notebook.rsplit("/", 1)[-1].removesuffix(".ipynb")
    if not filled.parameters_json:
        filled.parameters_json = "{}"
    if filled.timeout_seconds == 0:
        filled.timeout_seconds = int(default_timeout)
    if filled.max_retries == -1:
        filled.max_retries = default_retries
    if not filled.outputs:
        filled.outputs.extend(DEFAULT_OUTPUTS)
    return filled


def to_json(manifest: pb.Manifest) -> str:
    """The manifest as `hivemind.json` text (field names as in the proto)."""
    data = to_dict(manifest)
    if "parameters_json" in data:  # readable: a nested object rather than a quoted string
        data["parameters"] = json.loads(data.pop("parameters_json"))
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def from_json(text: str | bytes) -> pb.Manifest:
    """Parse `hivemind.json`; unknown keys and wrong types are InvalidInput."""
    try:
        data: Any = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"hivemind.json is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput("hivemind.json must hold a JSON object")
    if "parameters" in data:
        if "parameters_json" in data:
            raise InvalidInput("hivemind.json has both 'parameters' and 'parameters_json'")
        data["parameters_json"] = json.dumps(data.pop("parameters"))
    manifest = pb.Manifest()
    if "max_retries" not in data:
        manifest.max_retries = -1
    try:
        json_format.ParseDict(data, manifest)
    except json_format.ParseError as exc:
        raise InvalidInput(f"hivemind.json: {exc}") from None
    return manifest
