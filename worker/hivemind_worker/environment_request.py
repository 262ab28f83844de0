"""What environment a task asks for, read from its manifest and its unpacked bundle, and checked.

The worker trusts no bundle: the lock (or requirements.txt) goes through the same
`check_requirements` as on the user's side, and every file in the wheels folder must be a wheel (a
zip whose name follows PEP 427 and that holds its dist-info). A refusal is an EnvironmentBuildError
raised before anything is built, so the cache stays as it was.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.environment import (
    LOCK_PATH,
    MAX_REQUIREMENTS_BYTES,
    REQUIREMENTS_PATH,
    WHEELS_DIR,
    Requirement,
    check_image,
    check_mode,
    check_requirements,
    normalise_name,
    python_minor,
)
from hivemind_nodepool.protocol.errors import InvalidInput

from .errors import EnvironmentBuildError
from .results import read_regular

NONE, LOCK, REQUIREMENTS, IMAGE = "none", "lock", "requirements", "image"
MAX_WHEELS = 200
# name-version(-build)?-python-abi-platform.whl, each part without '-' (PEP 427)
_WHEEL_NAME = re.compile(
    r"^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._]*[A-Za-z0-9])?)-(?P<version>[A-Za-z0-9_.!+]+)"
    r"(-[0-9][A-Za-z0-9_.]*)?-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+\.whl$"
)


@dataclass(frozen=True)
class Wheel:
    path: Path
    name: str  # normalised
    version: str
    sha256: str


@dataclass(frozen=True)
class EnvironmentRequest:
    """kind: NONE (the bare runtime), LOCK (pinned: installed exactly, no resolution), REQUIREMENTS
    (resolved on the worker) or IMAGE (an allow-listed image as it is)."""

    kind: str
    text: bytes = b""
    requirements: tuple[Requirement, ...] = ()
    wheels: tuple[Wheel, ...] = ()
    python_version: str = ""  # the caller's Python ("" when it did not say)
    require_python: bool = False
    image: str = ""
    summary: str = ""
    source: str = ""  # the file it came from, for messages

    @property
    def python_minor(self) -> str:
        return python_minor(self.python_version) if self.python_version else ""

    def describe(self) -> str:
        """One line for `env list`: the summary the user's side wrote, else the first names."""
        if self.summary:
            return self.summary[:200]
        names = [f"{r.name} {r.pinned_version}" if r.pinned_version else r.name for r in self.requirements]
        shown = ", ".join(names[:4])
        return shown + (f" + {len(names) - 4} more" if len(names) > 4 else "")


@dataclass
class _Found:
    text: bytes | None
    source: str
    kind: str
    wheels: list[Wheel] = field(default_factory=list)


def _read(task_dir: Path, relative: str) -> bytes | None:
    data = read_regular(task_dir / relative, MAX_REQUIREMENTS_BYTES + 1)
    if data is not None and len(data) > MAX_REQUIREMENTS_BYTES:
        raise EnvironmentBuildError(f"{relative} is larger than {MAX_REQUIREMENTS_BYTES // 1024} KiB")
    return data


def check_wheel(path: Path) -> Wheel:
    """A wheel of the bundle's wheels folder, or EnvironmentBuildError saying why it is not one."""
    where = f"{WHEELS_DIR}/{path.name}"
    match = _WHEEL_NAME.match(path.name)
    if not match or not path.is_file() or path.is_symlink():
        raise EnvironmentBuildError(f"{where} is not a wheel (expected NAME-VERSION-PY-ABI-PLATFORM.whl)")
    name, version = match["name"], match["version"]
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise EnvironmentBuildError(f"{where} is not a wheel: it is not a zip archive ({exc})") from None
    dist_info = f"{name}-{version}.dist-info/"
    if not any(m.startswith(dist_info) and m.endswith(("/METADATA", "/RECORD")) for m in members):
        raise EnvironmentBuildError(f"{where} is not a wheel: it has no {dist_info}METADATA")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Wheel(path, normalise_name(name), version, digest)


def _wheels(task_dir: Path) -> list[Wheel]:
    folder = task_dir / WHEELS_DIR
    if not folder.is_dir() or folder.is_symlink():
        return []
    files = sorted(folder.iterdir())
    if len(files) > MAX_WHEELS:
        raise EnvironmentBuildError(f"{WHEELS_DIR} holds {len(files)} files; at most {MAX_WHEELS} wheels")
    return [check_wheel(path) for path in files]


def _find(mode: str, task_dir: Path) -> _Found:
    """The file the mode reads; an unset mode (an older client) reads requirements.txt if any."""
    if mode in ("auto", "freeze"):
        text = _read(task_dir, LOCK_PATH)
        return _Found(text, LOCK_PATH, LOCK if text and text.strip() else NONE, _wheels(task_dir))
    if mode in ("requirements", ""):
        text = _read(task_dir, REQUIREMENTS_PATH)
        return _Found(text, REQUIREMENTS_PATH, REQUIREMENTS if text and text.strip() else NONE)
    return _Found(None, "", NONE)


def requested_environment(manifest: pb.Manifest, task_dir: Path) -> EnvironmentRequest:
    """What the task asks for; EnvironmentBuildError for a refused mode, lock, requirement or wheel."""
    wanted = manifest.environment
    given = manifest.HasField("environment")
    python = wanted.python_version if given else ""
    try:
        mode = check_mode(wanted.mode) if given and wanted.mode else ""
        if mode == "image":
            return EnvironmentRequest(IMAGE, image=check_image(wanted.image), python_version=python)
    except InvalidInput as exc:
        raise EnvironmentBuildError(f"the environment was refused: {exc}") from None
    found = _find(mode, task_dir)
    try:
        requirements = check_requirements(found.text) if found.kind != NONE and found.text else []
    except InvalidInput as exc:
        raise EnvironmentBuildError(f"{found.source} was refused: {exc}") from None
    if found.kind == LOCK:
        loose = [r.line for r in requirements if r.pinned_version is None]
        if loose:
            raise EnvironmentBuildError(
                f"{LOCK_PATH} pins every package with ==; these lines do not: {', '.join(loose[:5])}"
            )
    return EnvironmentRequest(
        found.kind,
        text=(found.text or b"").replace(b"\r\n", b"\n").strip() + b"\n" if found.text else b"",
        requirements=tuple(requirements),
        wheels=tuple(found.wheels),
        python_version=python,
        require_python=bool(given and wanted.require_python),
        summary=wanted.summary if given else "",
        source=found.source,
    )
