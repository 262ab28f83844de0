"""Turning a notebook or a folder on disk into a task: the manifest and the bundle ZIP.

Used by the `hivemind submit` command and by the Jupyter server extension, so both package work
the same way: the notebook's folder (or the chosen folder) honouring .gitignore/.hivemindignore,
plus `hivemind.json`, the manifest.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from google.protobuf import json_format

from hivemind_nodepool.client.environment import EnvironmentChoice, Sources, capture
from hivemind_nodepool.client.imports import notebook_code
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.bundle import MANIFEST_NAME, PackedBundle, pack, scan_folder
from hivemind_nodepool.protocol.environment import REQUIREMENTS_PATH
from hivemind_nodepool.protocol.errors import InvalidInput
from hivemind_nodepool.protocol.units import parse_duration, parse_size

DEFAULT_MAX_BUNDLE_BYTES = 2 * 1024**3
MAX_REQUIREMENTS_BYTES = 1024 * 1024


@dataclass
class TaskRequest:
    """What a person asks for, in their own units (strings like '4G' and '30m' are welcome)."""

    cpus: float = 1.0
    memory: str | int = "2G"
    gpus: int = 0
    disk: str | int = 0  # 0: the worker's own per-task limit
    parameters: Mapping[str, object] | None = None
    timeout: str | float | None = None
    max_retries: int = -1
    name: str = ""
    labels: Mapping[str, str] | None = None
    priority: int = 0
    outputs: tuple[str, ...] = ()
    pull_variables: tuple[str, ...] = ()
    allow_network: bool = False
    environment: pb.Environment | None = None  # None: unset (the worker's behaviour before locks)

    def to_manifest(self, entry_notebook: str) -> pb.Manifest:
        if self.cpus <= 0:
            raise InvalidInput(f"--cpus must be more than 0, not {self.cpus}")
        if self.gpus < 0:
            raise InvalidInput(f"--gpus cannot be negative ({self.gpus})")
        try:
            parameters_json = json.dumps(dict(self.parameters or {}))
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidInput(f"parameters must be JSON values: {exc}") from None
        try:
            return self._manifest(entry_notebook, parameters_json)
        except (ValueError, OverflowError, TypeError) as exc:  # a number too big for its field
            raise InvalidInput(f"a value of the task is out of range: {exc}") from None

    def _manifest(self, entry_notebook: str, parameters_json: str) -> pb.Manifest:
        return pb.Manifest(
            name=self.name or Path(entry_notebook).stem,
            entry_notebook=entry_notebook,
            parameters_json=parameters_json,
            resources=pb.Resources(
                cpus=self.cpus,
                memory_bytes=parse_size(self.memory),
                gpus=self.gpus,
                disk_bytes=parse_size(self.disk) if self.disk else 0,
            ),
            labels=dict(self.labels or {}),
            timeout_seconds=int(parse_duration(self.timeout)) if self.timeout else 0,
            max_retries=self.max_retries,
            outputs=list(self.outputs),
            pull_variables=list(self.pull_variables),
            priority=self.priority,
            allow_network=self.allow_network,
            environment=self.environment,
        )


def manifest_json(manifest: pb.Manifest) -> bytes:
    """The manifest as the bundle's hivemind.json."""
    return json_format.MessageToJson(manifest, preserving_proto_field_name=True, indent=2).encode()


def find_entry(folder: Path, entry: str | None, how_to_choose: str = "--entry NAME") -> str:
    """The entry notebook's name inside folder: the one given, or the folder's only notebook.

    how_to_choose tells the caller's user how to name one (a CLI flag, an API field)."""
    if entry is not None:
        clean = PurePosixPath(entry)
        if (
            not entry
            or len(entry) > 1024
            or any(ord(c) < 32 for c in entry)
            or clean.is_absolute()
            or ".." in clean.parts
            or "\\" in entry
        ):
            raise InvalidInput(f"the entry notebook {entry[:200]!r} must be a path inside the folder")
        try:
            found = clean.suffix == ".ipynb" and (folder / clean).is_file()
        except OSError:  # a name the filesystem cannot hold
            found = False
        if not found:
            raise InvalidInput(f"there is no notebook {entry[:200]!r} in the folder {folder.name!r}")
        return clean.as_posix()
    notebooks = sorted(p.name for p in folder.glob("*.ipynb"))
    if len(notebooks) == 1:
        return notebooks[0]
    if not notebooks:
        raise InvalidInput(f"the folder {folder.name!r} holds no notebook (.ipynb) to run")
    raise InvalidInput(
        f"the folder {folder.name!r} holds {len(notebooks)} notebooks "
        f"({', '.join(notebooks[:5])}); "
        f"say which one to run with {how_to_choose}"
    )


def package_path(
    path: str | Path,
    request: TaskRequest,
    *,
    entry: str | None = None,
    workdir: str | Path | None = None,
    max_bytes: int = DEFAULT_MAX_BUNDLE_BYTES,
    how_to_choose: str = "--entry NAME",
    extra: Mapping[str, bytes] | None = None,
    environment: EnvironmentChoice | None = None,
) -> tuple[pb.Manifest, PackedBundle]:
    """Package a notebook (with its folder) or a folder into a bundle ZIP in workdir; `extra`
    files (such as a requirements.txt typed in the panel) replace same-named ones of the folder.
    Secrets are left out (see bundle.scan_folder) and named in the bundle's `left_out`.

    With an `environment` choice the environment is captured (or taken as chosen) into the
    manifest and the bundle; the lines to show the person are the bundle's `notices`."""
    source = Path(path).expanduser()
    if source.is_file():
        if source.suffix != ".ipynb":
            raise InvalidInput(f"{source} is not a notebook (.ipynb) or a folder")
        folder, entry_name = source.parent, source.name
    elif source.is_dir():
        folder, entry_name = source, find_entry(source, entry, how_to_choose)
    else:
        raise InvalidInput(f"{source} does not exist")
    manifest = request.to_manifest(entry_name)
    added = dict(extra or {})
    scan = scan_folder(folder)
    notices: list[str] = []
    if environment is not None:
        files = [(name, file) for name, file, _ in scan.files]
        entry_file = folder / entry_name
        sources = Sources(
            code=notebook_code(entry_file.read_bytes()) if entry_file.is_file() else [],
            files=[(name, file) for name, file in files if name != entry_name],
            names=[name for name, _ in files] + list(added),
        )
        captured = capture(environment, sources, request.gpus, max_bytes, subject="notebook")
        manifest.environment.CopyFrom(captured.environment)
        added.update(captured.entries)
        notices = captured.notices
    added[MANIFEST_NAME] = manifest_json(manifest)
    files = [(name, file) for name, file, _ in scan.files if name not in added]
    target_dir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="hivemind-bundle-"))
    packed = pack(target_dir / "bundle.zip", files, added, max_bytes=max_bytes)
    packed.left_out = scan.left_out  # the caller tells the person (left_out_notice)
    packed.notices = notices
    return manifest, packed


def folder_of(path: str | Path) -> Path:
    """The folder a notebook or folder is sent with."""
    source = Path(path).expanduser()
    return source.parent if source.is_file() else source


def read_requirements(path: str | Path) -> bytes:
    """A requirements file's bytes (checked later, with the other options)."""
    found = Path(path).expanduser()
    if not found.is_file():
        raise InvalidInput(f"the requirements file {found} does not exist")
    if found.stat().st_size > MAX_REQUIREMENTS_BYTES:
        raise InvalidInput(f"the requirements file {found} is larger than 1 MiB")
    return found.read_bytes()


def folder_requirements(path: str | Path) -> bytes | None:
    """The requirements.txt of the folder a notebook or folder is sent with, if it has one."""
    found = folder_of(path) / REQUIREMENTS_PATH
    return read_requirements(found) if found.is_file() else None


def parse_assignment(text: str, what: str = "parameter") -> tuple[str, object]:
    """('alpha', 0.5) from 'alpha=0.5'. Values are JSON when they parse as JSON, else strings."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise InvalidInput(f"a {what} is NAME=VALUE with NAME a Python identifier, not {text!r}")
    try:
        value: object = json.loads(raw)
    except ValueError:
        value = raw
    return name, value


def parse_labels(items: list[str] | None) -> dict[str, str]:
    """{'gpu': 'a100'} from ['gpu=a100'] or ['gpu=a100,site=b']."""
    labels: dict[str, str] = {}
    for item in items or []:
        for pair in filter(None, item.split(",")):
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise InvalidInput(f"bad label {pair!r}: a label is KEY=VALUE")
            labels[key.strip()] = value.strip()
    return labels
