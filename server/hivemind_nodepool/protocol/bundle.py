"""Task bundles and result archives: building them, and checking and unpacking them safely.

One module for the pool (which checks an upload before it accepts it), the worker (which unpacks a
bundle, then packs a result) and the Jupyter side and CLI (which pack a folder). A ZIP from the
outside is hostile until proven otherwise: entries are checked before anything is written, and bytes
are counted while unpacking because the sizes a ZIP declares can lie.
"""

from __future__ import annotations

import os
import stat
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pathspec

from hivemind_nodepool.protocol.errors import BundleError, InvalidInput

MANIFEST_NAME = "hivemind.json"
IGNORE_FILES = (".gitignore", ".hivemindignore")
# Never worth sending: version control, caches, environments, earlier results.
DEFAULT_IGNORES = (
    ".git/",
    ".hg/",
    ".svn/",
    "__pycache__/",
    "*.pyc",
    ".ipynb_checkpoints/",
    ".venv/",
    "venv/",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    "node_modules/",
    "hivemind-results/",
    ".DS_Store",
)
_COPY_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class BundleLimits:
    max_files: int = 20_000
    max_unpacked_bytes: int = 8 * 1024**3
    max_ratio: float = 200.0  # unpacked / packed, per entry and overall
    max_name_length: int = 1024


@dataclass
class PackedBundle:
    path: Path
    files: int
    unpacked_bytes: int
    packed_bytes: int
    names: list[str] = field(default_factory=list)


def _clean_name(name: str, limits: BundleLimits) -> str:
    """The entry's normalised relative path, or BundleError for anything that could escape."""
    if len(name) > limits.max_name_length:
        raise BundleError(f"entry name longer than {limits.max_name_length} characters")
    if "\x00" in name or "\\" in name:
        raise BundleError(f"entry {name!r} has a NUL or backslash in its name")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise BundleError(f"entry {name!r} is an absolute path")
    parts = PurePosixPath(name).parts
    if any(part == ".." for part in parts):
        raise BundleError(f"entry {name!r} climbs out of the bundle with '..'")
    clean = "/".join(part for part in parts if part not in ("", "."))
    if not clean:
        raise BundleError(f"entry {name!r} has an empty name")
    return clean


def _check_entry_type(info: zipfile.ZipInfo) -> None:
    """Plain files and folders only: no links, devices or pipes, and nothing encrypted."""
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise BundleError(f"entry {info.filename!r} is a symbolic link; links are not allowed")
    kind = stat.S_IFMT(mode)  # 0 when the archiver recorded permissions only
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise BundleError(f"entry {info.filename!r} is not a regular file or folder")
    if info.flag_bits & 0x1:
        raise BundleError(f"entry {info.filename!r} is encrypted")


def _check_no_file_holds_entries(seen: Mapping[str, bool]) -> None:
    """A file may not also be a folder of other entries ("a" and "a/b"); seen: name -> is a folder."""
    for name in seen:
        parent = PurePosixPath(name).parent
        while str(parent) != ".":
            if seen.get(str(parent)) is False:
                raise BundleError(f"entry {name!r} lies inside {str(parent)!r}, which is a file")
            parent = parent.parent


def check_entries(archive: zipfile.ZipFile, limits: BundleLimits = BundleLimits()) -> list[zipfile.ZipInfo]:
    """Every entry checked (names, links, duplicates, counts, declared sizes); the file entries."""
    infos = archive.infolist()
    if len(infos) > limits.max_files:
        raise BundleError(f"the bundle has {len(infos)} entries; the limit is {limits.max_files}")
    seen: dict[str, bool] = {}  # clean name -> is a directory
    files: list[zipfile.ZipInfo] = []
    total = 0
    packed = 0
    for info in infos:
        clean = _clean_name(info.filename, limits)
        _check_entry_type(info)
        is_dir = info.is_dir()
        key = clean.casefold()
        if key in seen and not (is_dir and seen[key]):
            raise BundleError(f"entry {info.filename!r} appears twice in the bundle")
        seen[key] = is_dir
        if is_dir:
            continue
        total += info.file_size
        packed += info.compress_size
        if info.file_size > limits.max_unpacked_bytes or total > limits.max_unpacked_bytes:
            raise BundleError(f"the bundle unpacks to more than {limits.max_unpacked_bytes} bytes")
        if info.file_size > 1024 * 1024 and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise BundleError(f"entry {info.filename!r} compresses suspiciously well (a zip bomb?)")
        files.append(info)
    _check_no_file_holds_entries(seen)
    if total > 1024 * 1024 and total > limits.max_ratio * max(packed, 1):
        raise BundleError("the bundle compresses suspiciously well (a zip bomb?)")
    return files


def open_archive(path: str | Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BundleError(f"not a readable ZIP file: {exc}") from None


def list_files(path: str | Path, limits: BundleLimits = BundleLimits()) -> list[str]:
    """The clean names of the files in a checked bundle."""
    with open_archive(path) as archive:
        return [_clean_name(info.filename, limits) for info in check_entries(archive, limits)]


def read_member(path: str | Path, name: str, max_bytes: int = 16 * 1024 * 1024) -> bytes | None:
    """One small file out of a bundle, or None when it is absent."""
    with open_archive(path) as archive:
        try:
            info = archive.getinfo(name)
        except KeyError:
            return None
        if info.file_size > max_bytes:
            raise BundleError(f"{name} is larger than {max_bytes} bytes")
        with archive.open(info) as member:
            data = member.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise BundleError(f"{name} is larger than {max_bytes} bytes")
        return data


def safe_extract(path: str | Path, destination: str | Path, limits: BundleLimits = BundleLimits()) -> int:
    """Unpack a bundle into destination (which must be empty or absent); returns bytes written."""
    target = Path(destination).resolve()
    target.mkdir(parents=True, exist_ok=True)
    written = 0
    with open_archive(path) as archive:
        for info in check_entries(archive, limits):
            clean = _clean_name(info.filename, limits)
            out = (target / clean).resolve()
            if target not in out.parents:
                raise BundleError(f"entry {info.filename!r} would land outside the task folder")
            out.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as sink, archive.open(info) as source:
                entry_bytes = 0
                while block := source.read(_COPY_BLOCK):
                    entry_bytes += len(block)
                    written += len(block)
                    if entry_bytes > info.file_size or written > limits.max_unpacked_bytes:
                        raise BundleError(
                            f"entry {info.filename!r} unpacks to more bytes than it declares or allowed"
                        )
                    sink.write(block)
    return written


def _ignore_spec(root: Path, extra: Iterable[str]) -> pathspec.GitIgnoreSpec:
    lines = list(DEFAULT_IGNORES) + list(extra)
    for name in IGNORE_FILES:
        ignore_file = root / name
        if ignore_file.is_file():
            lines.extend(ignore_file.read_text(errors="replace").splitlines())
    return pathspec.GitIgnoreSpec.from_lines(lines)


def collect_files(root: str | Path, ignore: Iterable[str] = ()) -> list[tuple[str, Path, int]]:
    """(name in bundle, path, size) of every file under root that the ignore rules keep.

    Symbolic links are skipped: a bundle carries files, not pointers into the sender's disk.
    """
    base = Path(root)
    if not base.is_dir():
        raise InvalidInput(f"{root} is not a folder")
    spec = _ignore_spec(base, ignore)
    found: list[tuple[str, Path, int]] = []
    for folder, dirs, names in os.walk(base):
        here = Path(folder)
        rel_dir = here.relative_to(base).as_posix()
        kept = []
        for name in sorted(dirs):
            rel = f"{rel_dir}/{name}/" if rel_dir != "." else f"{name}/"
            if not (here / name).is_symlink() and not spec.match_file(rel):
                kept.append(name)
        dirs[:] = kept
        for name in sorted(names):
            full = here / name
            rel = f"{rel_dir}/{name}" if rel_dir != "." else name
            if full.is_symlink() or not full.is_file() or spec.match_file(rel):
                continue
            found.append((rel, full, full.stat().st_size))
    return found


def pack(
    destination: str | Path,
    files: Iterable[tuple[str, Path]] = (),
    extra: Mapping[str, bytes] = {},
    max_bytes: int | None = None,
) -> PackedBundle:
    """Write a ZIP of files (name in bundle, path on disk) plus in-memory extras.

    Entries named in `extra` win over files of the same name. Raises InvalidInput past max_bytes,
    naming the biggest files, before writing anything.
    """
    chosen = [(name, path) for name, path in files if name not in extra]
    sizes = [(name, path, path.stat().st_size) for name, path in chosen]
    total = sum(size for _, _, size in sizes) + sum(len(data) for data in extra.values())
    if max_bytes is not None and total > max_bytes:
        biggest = sorted(sizes, key=lambda item: -item[2])[:5]
        listing = ", ".join(f"{name} ({size / 1024**2:.1f} MiB)" for name, _, size in biggest)
        raise InvalidInput(
            f"the folder holds {total / 1024**2:.1f} MiB, over the {max_bytes / 1024**2:.0f} MiB limit. "
            f"Biggest files: {listing}. Add them to .hivemindignore or pick a smaller folder."
        )
    target = Path(destination)
    names: list[str] = []
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, path, _ in sizes:
            archive.write(path, name)
            names.append(name)
        for name, data in extra.items():
            archive.writestr(name, data)
            names.append(name)
    return PackedBundle(
        path=target, files=len(names), unpacked_bytes=total, packed_bytes=target.stat().st_size, names=names
    )
