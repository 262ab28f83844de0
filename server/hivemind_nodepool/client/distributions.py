"""The distributions installed in this Python, read once per change of sys.path or site-packages.

One pass over `importlib.metadata.distributions()` gathers what capturing an environment needs:
each distribution's version, its `Requires-Dist`, the top-level modules it provides (what
`importlib.metadata.packages_distributions()` computes: top_level.txt, else the files in RECORD)
and its PEP 610 `direct_url.json`. The pass is done per distribution, so one with broken metadata
(no METADATA, no name, a version that is not a version) is reported in one line and left out
instead of breaking the capture; the first of a name on sys.path wins, as it does for imports.

The result is cached in the process (a kernel captures on every cell) and read again when sys.path
or a folder on it changes: installing or removing a distribution changes its folder's mtime.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from hivemind_nodepool.protocol.environment import normalise_name

# What every runtime image provides (worker/hivemind_worker/runtime/Dockerfile): these and their
# own requirements as installed here are never part of a task's lock.
RUNTIME_ROOTS = ("papermill", "ipykernel", "nbclient", "nbformat")
# Installers, never pinned by --env freeze (as `pip freeze` leaves them out).
INSTALLER_TOOLS = frozenset({"pip", "setuptools", "wheel", "uv", "distribute"})
_NATIVE_SUFFIXES = (".so", ".pyd")


@dataclass(frozen=True)
class DirectUrl:
    """Where a distribution was installed from, when not from an index (PEP 610)."""

    url: str
    editable: bool = False
    kind: str = "dir"  # "dir", "archive" or "vcs"
    vcs: str = ""
    commit: str = ""
    subdirectory: str = ""

    def local_path(self) -> Path | None:
        """The folder or file on this machine for a file:// URL, else None."""
        parsed = urlparse(self.url)
        if parsed.scheme != "file":
            return None
        return Path(unquote(parsed.path))

    def describe(self) -> str:
        where = self.local_path() or self.url
        if self.kind == "vcs":
            return f"{self.vcs} checkout {self.url}"
        return f"{'editable install' if self.editable else 'local install'} from {where}"


@dataclass(frozen=True)
class Installed:
    """One installed distribution."""

    name: str  # as its metadata spells it
    key: str  # normalised (PEP 503)
    version: str
    requires: tuple[str, ...]
    modules: tuple[str, ...]  # the top-level modules it provides
    direct_url: DirectUrl | None = None
    location: Path | None = None  # its metadata folder


@dataclass(frozen=True)
class Broken:
    """A distribution whose metadata cannot be read: where it is, what is wrong, what it seems to
    provide (from its folder's name and its files, where those can be read)."""

    label: str
    reason: str
    key: str
    modules: tuple[str, ...]

    def line(self) -> str:
        return f"{self.label}: {self.reason}; it is left out of the environment (reinstall it to fix it)"


@dataclass
class InstalledIndex:
    """Every usable distribution by key, the distributions of each top-level module, the broken."""

    by_key: dict[str, Installed] = field(default_factory=dict)
    by_module: dict[str, list[str]] = field(default_factory=dict)
    broken: list[Broken] = field(default_factory=list)

    def broken_for(self, module: str) -> Broken | None:
        """The broken distribution that seems to provide a module, if one does."""
        key = normalise_name(module)
        for item in self.broken:
            if module in item.modules or item.key == key:
                return item
        return None

    def local_sources(self) -> list[tuple[Path, str]]:
        """(folder, key) of every editable or local-folder install, deepest folder first."""
        found = []
        for dist in self.by_key.values():
            path = dist.direct_url.local_path() if dist.direct_url else None
            if path is not None and dist.direct_url is not None and dist.direct_url.kind == "dir":
                found.append((path, dist.key))
        return sorted(found, key=lambda item: -len(item[0].parts))

    def distributions_of(self, module: str) -> list[str]:
        """The keys of the distributions providing a top-level module ([] when none does).

        Editable installs often list no modules (a .pth file points at the source folder): a module
        found on sys.path inside such a folder belongs to it."""
        keys = self.by_module.get(module)
        if keys:
            return keys
        origin = _module_origin(module)
        if origin is None:
            return []
        for folder, key in self.local_sources():
            if folder == origin or folder in origin.parents:
                return [key]
        return []


def _module_origin(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError, AttributeError):
        return None
    if spec is None:
        return None
    where = spec.origin if spec.origin not in (None, "built-in", "frozen", "namespace") else None
    if where is None and spec.submodule_search_locations:
        where = next(iter(spec.submodule_search_locations), None)
    return Path(where).resolve() if where else None


def _broken(dist: importlib.metadata.Distribution, reason: str) -> Broken:
    """A broken distribution as a person finds it on disk: its dist-info folder."""
    path = getattr(dist, "_path", None)
    label = str(path) if path is not None else repr(dist)
    folder = Path(str(path)).name if path is not None else ""
    key = normalise_name(folder.split("-", 1)[0]) if folder else ""
    try:
        modules = _modules(dist)
    except (OSError, ValueError, UnicodeDecodeError):
        modules = ()
    return Broken(label, reason, key, modules)


def _modules(dist: importlib.metadata.Distribution) -> tuple[str, ...]:
    declared = dist.read_text("top_level.txt")
    if declared:
        return tuple(sorted({line.strip() for line in declared.splitlines() if line.strip()}))
    found: set[str] = set()
    for file in dist.files or ():
        parts = file.parts
        if not parts or parts[0] in ("..", "__pycache__") or parts[0].endswith((".dist-info", ".egg-info")):
            continue
        if len(parts) > 1:
            if parts[0].isidentifier():
                found.add(parts[0])
        elif file.suffix == ".py" or file.suffix in _NATIVE_SUFFIXES:
            stem = parts[0].split(".")[0]
            if stem.isidentifier():
                found.add(stem)
    return tuple(sorted(found))


def _direct_url(dist: importlib.metadata.Distribution) -> DirectUrl | None:
    text = dist.read_text("direct_url.json")
    if not text:
        return None
    try:
        data = json.loads(text)
        url = str(data["url"])
    except (ValueError, KeyError, TypeError):
        return None
    if "vcs_info" in data:
        vcs = data["vcs_info"] if isinstance(data["vcs_info"], dict) else {}
        return DirectUrl(
            url,
            kind="vcs",
            vcs=str(vcs.get("vcs", "git")),
            commit=str(vcs.get("commit_id", "")),
            subdirectory=str(data.get("subdirectory", "")),
        )
    if "archive_info" in data:
        return DirectUrl(url, kind="archive", subdirectory=str(data.get("subdirectory", "")))
    dir_info = data.get("dir_info") if isinstance(data.get("dir_info"), dict) else {}
    return DirectUrl(url, editable=bool(dir_info.get("editable")), kind="dir")


def read_distribution(dist: importlib.metadata.Distribution) -> Installed:
    """One distribution's facts; ValueError (saying what is wrong) when its metadata is broken."""
    metadata: Any = dist.metadata
    name = metadata["Name"] if metadata is not None else None
    if not isinstance(name, str) or not name.strip():
        raise ValueError("it has no METADATA, or no Name in it")
    raw_version = metadata["Version"]
    try:
        Version(str(raw_version))
    except InvalidVersion:
        raise ValueError(f"{name}: its version {raw_version!r} is not a version") from None
    return Installed(
        name=name,
        key=normalise_name(name),
        version=str(raw_version).strip(),
        requires=tuple(dist.requires or ()),
        modules=_modules(dist),
        direct_url=_direct_url(dist),
        location=Path(str(path)).resolve() if (path := getattr(dist, "_path", None)) else None,
    )


def scan(paths: Iterable[str] | None = None) -> InstalledIndex:
    """Read every distribution on sys.path (or on `paths`) into an index."""
    index = InstalledIndex()
    found = importlib.metadata.distributions(path=sys.path if paths is None else list(paths))
    for dist in found:
        try:
            installed = read_distribution(dist)
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            index.broken.append(_broken(dist, str(exc)))
            continue
        earlier = index.by_key.get(installed.key)
        if earlier is not None and not _replaces(installed, earlier):
            continue  # shadowed by one earlier on sys.path
        index.by_key[installed.key] = installed
        for module in installed.modules:
            keys = index.by_module.setdefault(module, [])
            if installed.key not in keys:
                keys.append(installed.key)
    return index


def _replaces(later: Installed, earlier: Installed) -> bool:
    """A build leaves metadata (`*.egg-info`) in the source folder of an editable install; when
    that folder is on sys.path first (a notebook at the project's root), the installed
    distribution, which says where it came from, is still the one that counts."""
    source = later.direct_url.local_path() if later.direct_url else None
    where = earlier.location
    if source is None or where is None or earlier.direct_url is not None:
        return False
    return source.resolve() in where.parents


def _fingerprint() -> tuple[tuple[str, int], ...]:
    """sys.path with the mtime of each entry: it changes when a distribution comes or goes."""
    marks = []
    for entry in sys.path:
        try:
            marks.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            marks.append((entry, -1))
    return tuple(marks)


class _Cache:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.mark: tuple[tuple[str, int], ...] | None = None
        self.index: InstalledIndex | None = None


_cache = _Cache()


def installed() -> InstalledIndex:
    """This Python's distributions, cached until sys.path or a folder on it changes."""
    mark = _fingerprint()
    with _cache.lock:
        if _cache.index is not None and _cache.mark == mark:
            return _cache.index
    importlib.invalidate_caches()  # so find_spec sees what was installed since
    index = scan()
    with _cache.lock:
        _cache.mark, _cache.index = mark, index
    return index


def _wanted(requirement: Requirement, extras: set[str], environment: Mapping[str, str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**environment, "extra": extra}) for extra in ({""} | extras))


def closure(index: InstalledIndex, roots: Mapping[str, set[str]]) -> dict[str, set[str]]:
    """The roots plus every distribution they require as installed, with the extras asked for
    (markers evaluated for this Python). Requirements not installed here are skipped: this
    Python runs without them."""
    environment = {key: str(value) for key, value in default_environment().items()}
    chosen: dict[str, set[str]] = {}
    todo = [(normalise_name(key), set(extras)) for key, extras in roots.items()]
    while todo:
        key, extras = todo.pop()
        dist = index.by_key.get(key)
        if dist is None:
            continue
        if key in chosen and extras <= chosen[key]:
            continue
        chosen[key] = chosen.get(key, set()) | extras
        for text in dist.requires:
            try:
                requirement = Requirement(text)
            except InvalidRequirement:
                continue
            if _wanted(requirement, chosen[key], environment):
                todo.append((normalise_name(requirement.name), set(requirement.extras)))
    return chosen


def runtime_keys(index: InstalledIndex) -> frozenset[str]:
    """What the worker's runtime provides: RUNTIME_ROOTS and their closure as installed here."""
    return frozenset(closure(index, {root: set() for root in RUNTIME_ROOTS})) | frozenset(RUNTIME_ROOTS)
