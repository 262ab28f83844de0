"""Task bundles and result archives: building them, and checking and unpacking them safely.

One module for the pool (which checks an upload before it accepts it), the worker (which unpacks a
bundle, then packs a result) and the Jupyter side and CLI (which pack a folder). A ZIP from the
outside is hostile until proven otherwise: entries are checked before anything is written, and bytes
are counted while unpacking because the sizes a ZIP declares can lie.
"""

from __future__ import annotations

import json
import os
import re
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

# HiveMind's own credentials (a user's pool token, a worker's identity): never packed, whatever the
# ignore files say. Found by name, and by content for copies under other names.
HIVEMIND_CREDENTIALS = ("**/hivemind/credentials.json", "**/hivemind/credentials.tmp")
# Well-known secret places and files: left out unless `!PATTERN` in .hivemindignore asks for one.
SECRET_PATTERNS = (
    ".ssh/",
    ".gnupg/",
    ".aws/",
    "**/.config/gcloud/",
    ".netrc",
    "_netrc",
    ".git-credentials",
    "*.pem",
    "*.key",
    ".env",
    ".env.*",
    "**/jupyter/runtime/",  # Jupyter's runtime folder: kernel connection keys, server tokens
    "jpserver-*.json",
    "jpserver-*-open.html",
    "nbserver-*.json",
)
# A private key in PEM/OpenSSH/PGP/PuTTY form, wherever it starts a line of the file's head.
_PRIVATE_KEY = re.compile(rb"(?m)^(-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|PuTTY-User-Key-File-\d)")
_SNIFF_BYTES = 8192
_SNIFF_JSON_BYTES = 64 * 1024


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
    left_out: list[LeftOut] = field(default_factory=list)  # secrets the packer did not send


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


def _ignore_lines(root: Path) -> tuple[list[str], list[str]]:
    """(every ignore line, the `!PATTERN` lines of .hivemindignore turned into plain patterns)."""
    lines: list[str] = []
    includes: list[str] = []
    for name in IGNORE_FILES:
        ignore_file = root / name
        if ignore_file.is_file():
            text = ignore_file.read_text(errors="replace").splitlines()
            lines.extend(text)
            if name == ".hivemindignore":
                includes.extend(line[1:] for line in text if line.startswith("!") and line[1:].strip())
    return lines, includes


@dataclass(frozen=True)
class LeftOut:
    """A file or folder the packer left out because it holds a secret."""

    name: str  # as in the bundle; a folder ends with "/"
    why: str  # "HiveMind credentials", "private key", "secret file", "secret folder"
    files: int = 1
    can_include: bool = True  # False for HiveMind's own credentials: they are never sent


@dataclass
class FolderScan:
    files: list[tuple[str, Path, int]]  # (name in bundle, path, size)
    left_out: list[LeftOut]


def _json_secret(path: Path, size: int) -> str | None:
    """'HiveMind credentials' or 'Jupyter connection file' for such a JSON file, else None."""
    if size > _SNIFF_JSON_BYTES:
        return None
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    if ("token" in data and {"pool", "user"} <= data.keys()) or {"worker_id", "credential"} <= data.keys():
        return "HiveMind credentials"
    if "key" in data and ("signature_scheme" in data or "shell_port" in data):
        return "Jupyter connection file"
    return None


def _holds_private_key(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError:
        return False
    return bool(_PRIVATE_KEY.search(head))


class _SecretRules:
    """Which files of one folder are secrets, and the tally of what was left out."""

    def __init__(self, includes: list[str]) -> None:
        self.never = pathspec.GitIgnoreSpec.from_lines(HIVEMIND_CREDENTIALS)
        self.secret = pathspec.GitIgnoreSpec.from_lines(SECRET_PATTERNS)
        self.wanted = pathspec.GitIgnoreSpec.from_lines(includes)  # `!PATTERN` of .hivemindignore
        self.left: dict[str, LeftOut] = {}

    def secret_folder(self, rel: str) -> str | None:
        """The outermost left-out secret folder above rel. As in git, a file inside a left-out
        folder comes only with the folder (`!.ssh/`)."""
        folders = (p for p in _parents(rel) if self.secret.match_file(p) and not self.wanted.match_file(p))
        return next(folders, None)

    def why_secret(self, rel: str, path: Path, size: int) -> tuple[str, bool] | None:
        """(why, whether `!PATTERN` may send it) for a secret, None for a file to send."""
        kind = _json_secret(path, size) if rel.endswith((".json", ".tmp")) else None
        if self.never.match_file(rel) or kind == "HiveMind credentials":
            return "HiveMind credentials", False
        if self.secret_folder(rel) is not None:
            return "secret folder", True
        if self.wanted.match_file(rel):
            return None
        if self.secret.match_file(rel):
            return "secret file", True
        if kind is not None:
            return kind, True
        return ("private key", True) if _holds_private_key(path) else None

    def leave_out(self, rel: str, why: str, can_include: bool) -> None:
        folder = self.secret_folder(rel)  # files under a secret folder are reported once, as it
        key = folder or rel
        before = self.left.get(key)
        if before is not None:
            self.left[key] = LeftOut(key, before.why, before.files + 1, before.can_include and can_include)
        else:
            self.left[key] = LeftOut(key, "secret folder" if folder else why, 1, can_include)

    def report(self) -> list[LeftOut]:
        """HiveMind's credentials first, then what was found by content, then the rest by name."""
        order = {"HiveMind credentials": 0, "private key": 1, "Jupyter connection file": 1}
        return sorted(self.left.values(), key=lambda item: (order.get(item.why, 2), item.name))


def scan_folder(root: str | Path, ignore: Iterable[str] = ()) -> FolderScan:
    """The files under root that the ignore rules keep, less secrets, and the secrets left out.

    Symbolic links are skipped: a bundle carries files, not pointers into the sender's disk.
    HiveMind's own credential files are never kept. Well-known secret locations and files
    (SECRET_PATTERNS, and any file that holds a private key) are left out unless a `!PATTERN`
    line of .hivemindignore names them; .gitignore and .hivemindignore apply first, as always.
    """
    base = Path(root)
    if not base.is_dir():
        raise InvalidInput(f"{root} is not a folder")
    lines, includes = _ignore_lines(base)
    spec = pathspec.GitIgnoreSpec.from_lines(list(DEFAULT_IGNORES) + list(ignore) + lines)
    rules = _SecretRules(includes)
    found: list[tuple[str, Path, int]] = []
    for folder, dirs, names in os.walk(base):
        here = Path(folder)
        prefix = "" if here == base else here.relative_to(base).as_posix() + "/"
        dirs[:] = [
            name
            for name in sorted(dirs)
            if not (here / name).is_symlink() and not spec.match_file(f"{prefix}{name}/")
        ]
        for name in sorted(names):
            full, rel = here / name, prefix + name
            if full.is_symlink() or not full.is_file() or spec.match_file(rel):
                continue
            size = full.stat().st_size
            secret = rules.why_secret(rel, full, size)
            if secret is None:
                found.append((rel, full, size))
            else:
                rules.leave_out(rel, *secret)
    return FolderScan(found, rules.report())


def _parents(rel: str) -> list[str]:
    """'a/', 'a/b/' for 'a/b/c': the folders above a file, outermost first."""
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: i + 1]) + "/" for i in range(len(parts))]


def collect_files(root: str | Path, ignore: Iterable[str] = ()) -> list[tuple[str, Path, int]]:
    """(name in bundle, path, size) of every file under root that the packer sends: see
    scan_folder, which also says which secrets it left out."""
    return scan_folder(root, ignore).files


def left_out_notice(left_out: Iterable[LeftOut]) -> str:
    """One line for the person: what was left out, and how to send a secret on purpose ('' if none)."""
    items = list(left_out)
    if not items:
        return ""
    shown = []
    for item in items[:20]:
        notes = [item.why] if item.why not in ("secret file", "secret folder") else []
        if item.files > 1:
            notes.append(f"{item.files} files")
        shown.append(item.name + (f" ({', '.join(notes)})" if notes else ""))
    more = f" and {len(items) - 20} more" if len(items) > 20 else ""
    line = f"left out as secrets: {', '.join(shown)}{more}."
    if any(item.can_include for item in items):
        line += " To send one on purpose, add !NAME to .hivemindignore."
    if not all(item.can_include for item in items):
        line += " HiveMind credentials are never sent."
    return line


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
