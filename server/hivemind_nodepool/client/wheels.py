"""Wheels of distributions no index can serve (editable, local-folder, local-file and VCS installs),
built on the user's side to travel in the bundle.

uv builds when it is installed (`uv build --wheel`), pip otherwise (`pip wheel --no-deps`). When
every package the project's build needs (its `[build-system] requires`) is installed here, the
build runs without isolation: fast, and it needs no index. A folder whose files have not changed is
not built again in this process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from hivemind_nodepool.client.distributions import Installed, InstalledIndex
from hivemind_nodepool.protocol.environment import normalise_name
from hivemind_nodepool.protocol.errors import InvalidInput

BUILD_TIMEOUT = 600.0
_SKIPPED_DIRS = frozenset(
    {".git", ".hg", ".svn", "__pycache__", "build", "dist", ".venv", "venv", "node_modules", ".tox", ".nox"}
    | {".mypy_cache", ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints"}
)
_MAX_FINGERPRINT_FILES = 20_000
_LEGACY_BUILD_REQUIRES = ("setuptools>=40.8.0",)  # recent setuptools builds wheels itself


@dataclass(frozen=True)
class BuiltWheel:
    key: str
    version: str  # the wheel's, which the lock pins
    path: Path
    contents_sha256: str  # of its RECORD: the same files give the same value, whenever built


class _Cache:
    """Wheels built in this process, by distribution and source fingerprint."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.folder: Path | None = None
        self.built: dict[tuple[str, str], BuiltWheel] = {}

    def where(self) -> Path:
        if self.folder is None or not self.folder.is_dir():
            self.folder = Path(tempfile.mkdtemp(prefix="hivemind-wheels-"))
        return self.folder


_cache = _Cache()


def _uv() -> str | None:
    found = shutil.which("uv")
    if found:
        return found
    if importlib.util.find_spec("uv") is None:
        return None
    try:
        import uv

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError, AttributeError):
        return None


def _fingerprint(folder: Path) -> str | None:
    """What the folder's files are now (names, sizes, mtimes); None when too many to look at."""
    digest = hashlib.sha256()
    count = 0
    for here, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS and not d.endswith(".egg-info"))
        for name in sorted(names):
            count += 1
            if count > _MAX_FINGERPRINT_FILES:
                return None
            path = Path(here) / name
            try:
                stat = path.stat()
            except OSError:
                continue
            digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _build_requires(folder: Path) -> list[str]:
    pyproject = folder / "pyproject.toml"
    if not pyproject.is_file():
        return list(_LEGACY_BUILD_REQUIRES)
    try:
        data = tomllib.loads(pyproject.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return list(_LEGACY_BUILD_REQUIRES)
    system = data.get("build-system")
    requires = system.get("requires") if isinstance(system, dict) else None
    if not isinstance(requires, list):
        return list(_LEGACY_BUILD_REQUIRES)
    return [str(item) for item in requires]


def _build_deps_installed(folder: Path, index: InstalledIndex) -> bool:
    """Whether everything the project's build needs is installed here (then: no isolation)."""
    for text in _build_requires(folder):
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            return False
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        have = index.by_key.get(normalise_name(requirement.name))
        if have is None or not requirement.specifier.contains(have.version, prereleases=True):
            return False
    return True


def _command(source: str, out: Path, isolated: bool, folder_source: bool) -> list[str]:
    uv = _uv() if folder_source else None  # uv builds folders and archives, pip also URLs
    if uv is not None:
        command = [uv, "build", "--wheel", "--out-dir", str(out), "--python", sys.executable]
        return [*command, *([] if isolated else ["--no-build-isolation"]), source]
    if importlib.util.find_spec("pip") is None:
        raise InvalidInput(
            f"building a wheel of {source} needs uv or pip in this Python ({sys.executable}): pip install uv"
        )
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check"]
    return [*command, *([] if isolated else ["--no-build-isolation"]), "-w", str(out), source]


def _source(dist: Installed) -> tuple[str, Path | None]:
    """What to build from (a folder, a file, or a URL pip understands) and its local folder."""
    direct = dist.direct_url
    if direct is None:
        raise InvalidInput(f"{dist.name} was installed from an index; it needs no local build")
    local = direct.local_path()
    if direct.kind == "vcs":
        url = f"{direct.vcs}+{direct.url}" + (f"@{direct.commit}" if direct.commit else "")
        return url + (f"#subdirectory={direct.subdirectory}" if direct.subdirectory else ""), None
    if local is None:
        return direct.url, None
    if direct.subdirectory:
        local = local / direct.subdirectory
    if not local.exists():
        raise InvalidInput(
            f"{dist.name} {dist.version} was installed from {local}, which no longer exists: "
            "reinstall it, or uninstall it if the task does not need it"
        )
    return str(local), local if local.is_dir() else None


def _contents_sha256(wheel: Path, key: str) -> str:
    try:
        with zipfile.ZipFile(wheel) as archive:
            record = next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD"))
            return hashlib.sha256(archive.read(record)).hexdigest()
    except (zipfile.BadZipFile, StopIteration, OSError):
        raise InvalidInput(f"the wheel built for {key} ({wheel.name}) is not a valid wheel") from None


def _run_build(dist: Installed, source: str, folder: Path | None, index: InstalledIndex) -> Path:
    out = Path(tempfile.mkdtemp(prefix=f"{dist.key}-", dir=_cache.where()))
    isolated = folder is None or not _build_deps_installed(folder, index)
    from_url = "://" in source and not source.startswith("file:")
    command = _command(source, out, isolated, folder_source=not from_url)
    where = dist.direct_url.describe() if dist.direct_url else source
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InvalidInput(f"building a wheel of {dist.name} ({where}) failed: {exc}") from None
    wheels = sorted(out.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
        raise InvalidInput(
            f"building a wheel of {dist.name} {dist.version} ({where}) failed; fix its build, or "
            f"choose the packages yourself (--env none, --requirements FILE):\n{tail}"
        )
    return wheels[0]


def _existing_wheel(dist: Installed) -> Path | None:
    """A distribution installed from a wheel file on this machine: that file, when still there."""
    direct = dist.direct_url
    local = direct.local_path() if direct is not None and direct.kind == "archive" else None
    return local if local is not None and local.suffix == ".whl" and local.is_file() else None


def build_wheel(dist: Installed, index: InstalledIndex) -> BuiltWheel:
    """A wheel of a distribution installed from a folder, file or VCS; InvalidInput naming it when
    the build fails."""
    wheel = _existing_wheel(dist)
    fingerprint = None
    if wheel is None:
        source, folder = _source(dist)
        fingerprint = _fingerprint(folder) if folder is not None else None
        with _cache.lock:
            cached = _cache.built.get((dist.key, fingerprint)) if fingerprint else None
        if cached is not None and cached.path.is_file():
            return cached
        wheel = _run_build(dist, source, folder, index)
    try:
        _, version, _, _ = parse_wheel_filename(wheel.name)
    except InvalidWheelFilename:
        raise InvalidInput(f"{wheel.name}, the wheel of {dist.name}, does not have a wheel's name") from None
    built = BuiltWheel(dist.key, str(version), wheel, _contents_sha256(wheel, dist.key))
    if fingerprint:
        with _cache.lock:
            _cache.built[(dist.key, fingerprint)] = built
    return built
