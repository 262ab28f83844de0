"""Task bundles and result archives: building them, and checking and unpacking them safely.

One module for the pool (which checks an upload before it accepts it), the worker (which unpacks a
bundle, then packs a result) and the Jupyter side and CLI (which pack a folder, and unpack a result).
A ZIP from the outside is hostile until proven otherwise: entries are checked before anything is
written, and bytes are counted while unpacking because the sizes a ZIP declares can lie.

What is refused is only what is unsafe to unpack anywhere: names that climb out ('..', absolute
names, NUL), links, devices and other special files, encryption, two entries with one name, more
entries or more declared bytes than the limits. How well an entry compresses says nothing about
safety (a file of zeros is ordinary data), so there is no ratio rule: the declared sizes are capped,
and an entry that inflates to more than it declared is stopped while it is written.

Names travel as the ZIP stores them. The unpacker maps each onto the local filesystem: a name that
cannot exist there (two names that differ only in case on a case-insensitive filesystem, a
backslash or a reserved name on Windows, a name too long) gets a new name next to the others, and
the caller is told which (`Unpacked.renamed`). Nothing is ever written outside the destination,
which must be empty, so nothing already there is overwritten.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import struct
import tempfile
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import pathspec

from hivemind_nodepool.protocol.errors import BundleError, InvalidInput

log = logging.getLogger(__name__)

MANIFEST_NAME = "hivemind.json"
RESULT_META = ".hivemind/result.json"  # in a result: outcome, metrics, file list (worker/results.py)
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
_NAME_MAX = 255  # bytes in one path component on the common filesystems
# Windows cannot hold these characters in a name, nor these base names (any extension).
_WINDOWS_BAD = frozenset('<>:"/\\|?*') | frozenset(chr(c) for c in range(32))
_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"{p}{n}" for p in ("COM", "LPT") for n in "0123456789¹²³"]
)

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
    max_name_length: int = 4096  # a whole Linux path (PATH_MAX): every name a task can write


@dataclass
class PackedBundle:
    path: Path
    files: int
    unpacked_bytes: int
    packed_bytes: int
    names: list[str] = field(default_factory=list)
    left_out: list[LeftOut] = field(default_factory=list)  # secrets the packer did not send
    renamed: dict[str, str] = field(default_factory=dict)  # name on disk -> name stored
    notices: list[str] = field(default_factory=list)  # lines for the person (the environment captured)


@dataclass(frozen=True)
class LocalNames:
    """The rules of the filesystem a ZIP is unpacked onto. `case_insensitive` None: find out by
    probing the destination folder."""

    windows: bool = os.name == "nt"
    case_insensitive: bool | None = None


@dataclass
class Unpacked:
    bytes_written: int
    files: int
    renamed: dict[str, str] = field(default_factory=dict)  # name in the ZIP -> name written


def _clean_name(name: str, limits: BundleLimits) -> str:
    """The entry's normalised relative path, or BundleError for anything that could escape."""
    if len(name) > limits.max_name_length:
        raise BundleError(f"entry name longer than {limits.max_name_length} characters")
    if "\x00" in name:
        raise BundleError(f"entry {name!r} has a NUL in its name")
    # A backslash is an ordinary character in a POSIX name (the unpacker renames it on Windows);
    # a drive letter is refused as the absolute name it is there.
    if name.startswith("/") or (len(name) > 1 and name[1] == ":" and name[0].isalpha()):
        raise BundleError(f"entry {name!r} is an absolute path")
    parts = PurePosixPath(name).parts
    if any(part == ".." for part in parts):
        raise BundleError(f"entry {name!r} climbs out of the bundle with '..'")
    clean = "/".join(part for part in parts if part not in ("", "."))
    if not clean:
        raise BundleError(f"entry {name!r} has an empty name")
    return clean


# -- the central directory, read before zipfile parses it ------------------------------------------

_EOCD = struct.Struct("<4s4H2LH")
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")


def _count_entries(handle: BinaryIO, limit: int) -> None:
    """Refuse an archive with more than `limit` entries before zipfile reads its directory.

    zipfile builds an object per entry up front: a million tiny entries cost half a GiB and many
    seconds before any check could run. The end record's count may lie, so the directory itself
    is walked (as zipfile walks it, by its size) and the walk stops at the limit. Anything this
    cannot read is left for zipfile to refuse."""
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    tail_start = max(0, size - (_EOCD.size + 65535))
    handle.seek(tail_start)
    tail = handle.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _EOCD.size:
        return
    eocd_at = tail_start + at
    fields = _EOCD.unpack_from(tail, at)
    entries, cd_size = fields[4], fields[5]
    cd_end = eocd_at
    locator_at = eocd_at - _EOCD64_LOCATOR.size
    if locator_at - _EOCD64.size >= 0:
        handle.seek(locator_at)
        locator = handle.read(_EOCD64_LOCATOR.size)
        if locator[:4] == b"PK\x06\x07":
            record_at = locator_at - _EOCD64.size
            handle.seek(record_at)
            record = handle.read(_EOCD64.size)
            if record[:4] == b"PK\x06\x06":
                values = _EOCD64.unpack(record)
                entries, cd_size, cd_end = values[7], values[8], record_at
    if entries > limit:
        raise BundleError(f"the archive has {entries} entries; the limit is {limit}")
    cd_start = cd_end - cd_size
    if cd_start < 0:
        return
    handle.seek(cd_start)
    walked = counted = 0
    while walked < cd_size:
        head = handle.read(_CENTRAL.size)
        if len(head) < _CENTRAL.size or head[:4] != b"PK\x01\x02":
            return
        values = _CENTRAL.unpack(head)
        skip = values[12] + values[13] + values[14]  # name, extra field, comment
        handle.seek(skip, os.SEEK_CUR)
        walked += _CENTRAL.size + skip
        counted += 1
        if counted > limit:
            raise BundleError(f"the archive has more than {limit} entries; the limit is {limit}")


def open_archive(path: str | Path, limits: BundleLimits = BundleLimits()) -> zipfile.ZipFile:
    try:
        with open(path, "rb") as handle:
            _count_entries(handle, limits.max_files)
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, struct.error) as exc:
        raise BundleError(f"not a readable ZIP file: {exc}") from None


def check_entries(archive: zipfile.ZipFile, limits: BundleLimits = BundleLimits()) -> list[zipfile.ZipInfo]:
    """Every entry checked (names, links, duplicates, counts, declared sizes); the file entries."""
    infos = archive.infolist()
    if len(infos) > limits.max_files:
        raise BundleError(f"the bundle has {len(infos)} entries; the limit is {limits.max_files}")
    seen: dict[str, bool] = {}  # clean name -> is a directory
    files: list[zipfile.ZipInfo] = []
    total = 0
    for info in infos:
        clean = _clean_name(info.filename, limits)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise BundleError(f"entry {info.filename!r} is a symbolic link; links are not allowed")
        kind = stat.S_IFMT(mode)  # 0 when the archiver recorded permissions only
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise BundleError(f"entry {info.filename!r} is not a regular file or folder")
        if info.flag_bits & 0x1:
            raise BundleError(f"entry {info.filename!r} is encrypted")
        is_dir = info.is_dir()
        # Only the same name twice is refused: names that differ in case are different files on
        # the machine that made them, and the unpacker renames them where they would collide.
        if clean in seen and not (is_dir and seen[clean]):
            raise BundleError(f"entry {info.filename!r} appears twice in the bundle")
        seen[clean] = is_dir
        if is_dir:
            continue
        total += info.file_size
        if info.file_size > limits.max_unpacked_bytes or total > limits.max_unpacked_bytes:
            raise BundleError(f"the bundle unpacks to more than {limits.max_unpacked_bytes} bytes")
        files.append(info)
    # A file may not also be a folder of other entries ("a" and "a/b").
    for name in seen:
        parent = PurePosixPath(name).parent
        while str(parent) != ".":
            if seen.get(str(parent)) is False:
                raise BundleError(f"entry {name!r} lies inside {str(parent)!r}, which is a file")
            parent = parent.parent
    return files


def check_archive(path: str | Path, limits: BundleLimits = BundleLimits()) -> list[str]:
    """The clean names of the files in an archive, after every check an unpacker makes before it
    writes (what the pool runs on an upload)."""
    with open_archive(path, limits) as archive:
        return [_clean_name(info.filename, limits) for info in check_entries(archive, limits)]


def list_files(path: str | Path, limits: BundleLimits = BundleLimits()) -> list[str]:
    """The clean names of the files in a checked bundle."""
    return check_archive(path, limits)


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


# -- unpacking onto the local filesystem -----------------------------------------------------------


def _probe_case_insensitive(folder: Path) -> bool:
    probe = folder / f".hivemind-case-{secrets.token_hex(4)}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        return os.path.exists(folder / probe.name.upper())
    finally:
        probe.unlink()


def _windows_component(part: str) -> str:
    """`part` as Windows can hold it: forbidden characters become '_', a reserved base name gets a
    '_' in front, trailing dots and spaces (which Windows drops) become '_'."""
    fixed = "".join("_" if ch in _WINDOWS_BAD else ch for ch in part)
    stripped = fixed.rstrip(". ")
    if stripped != fixed:
        fixed = stripped + "_" * (len(fixed) - len(stripped))
    if fixed.split(".")[0].upper().rstrip(" ") in _WINDOWS_RESERVED:
        fixed = "_" + fixed
    return fixed


def _short_component(part: str) -> str:
    """`part` cut to what one path component may hold, kept unique by a hash of the whole."""
    if len(os.fsencode(part)) <= _NAME_MAX:
        return part
    suffix = PurePosixPath(part).suffix
    suffix = suffix if len(suffix) <= 16 else ""
    mark = "~" + hashlib.sha256(os.fsencode(part)).hexdigest()[:8]
    stem = part[: len(part) - len(suffix)]
    while len(os.fsencode(stem + mark + suffix)) > _NAME_MAX:
        stem = stem[:-1]
    return stem + mark + suffix


class _Placer:
    """Chooses the local name of each entry, one path component at a time, and creates folders.

    `taken` holds, per local folder, the names in it as the filesystem compares them (folded when
    it ignores case and Unicode normalisation), so a second name that would land on the first gets
    a '~2' of its own instead."""

    def __init__(self, root: Path, names: LocalNames) -> None:
        self.root = root
        self.windows = names.windows
        insensitive = names.case_insensitive
        self.insensitive = _probe_case_insensitive(root) if insensitive is None else insensitive
        self.taken: dict[str, dict[str, bool]] = {"": {}}  # folder -> {key: is a folder}
        self.actual: dict[str, dict[str, str]] = {"": {}}  # folder -> {key: local name}

    def _key(self, part: str) -> str:
        return unicodedata.normalize("NFC", part).casefold() if self.insensitive else part

    def _local(self, part: str) -> str:
        return _short_component(_windows_component(part) if self.windows else part)

    def _free(self, folder: str, wanted: str) -> str:
        taken = self.taken[folder]
        if self._key(wanted) not in taken:
            return wanted
        path = PurePosixPath(wanted)
        stem, suffix = (path.stem, path.suffix) if path.stem else (wanted, "")
        number = 2
        while True:
            candidate = _short_component(f"{stem}~{number}{suffix}")
            if self._key(candidate) not in taken:
                return candidate
            number += 1

    def _claim(self, folder: str, local: str, is_dir: bool) -> None:
        key = self._key(local)
        self.taken[folder][key] = is_dir
        self.actual[folder][key] = local

    def folder(self, parent: str, part: str) -> str:
        """The local folder for `part` inside the local folder `parent` (created when new)."""
        local = self._local(part)
        key = self._key(local)
        if self.taken[parent].get(key) is True:  # already there (maybe in another case): share it
            found = self.actual[parent][key]
            return f"{parent}/{found}" if parent else found
        for _ in range(100):
            local = self._free(parent, local)
            rel = f"{parent}/{local}" if parent else local
            try:
                os.mkdir(self.root / rel, 0o755)
            except FileExistsError:  # the filesystem folds names in a way not predicted
                self._claim(parent, local, False)
                continue
            except OSError as exc:
                if exc.errno not in (errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ):
                    raise
                local = f"renamed-{hashlib.sha256(os.fsencode(part)).hexdigest()[:12]}"
                continue
            self._claim(parent, local, True)
            self.taken.setdefault(rel, {})
            self.actual.setdefault(rel, {})
            return rel
        raise BundleError(f"no name for folder {part!r} could be created here")

    def folders(self, parts: Iterable[str]) -> str:
        """The local folder for a path of stored folder names, each created when new."""
        parent = ""
        for part in parts:
            parent = self.folder(parent, part)
        return parent

    def open_file(self, parent: str, part: str) -> tuple[str, int]:
        """(local relative name, fd) of a new file for `part` inside the local folder `parent`."""
        local = self._local(part)
        for _ in range(100):
            local = self._free(parent, local)
            rel = f"{parent}/{local}" if parent else local
            out = self.root / rel
            if self.root not in out.parent.resolve().parents and out.parent.resolve() != self.root:
                raise BundleError(f"entry {part!r} would land outside the folder")
            try:
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            except FileExistsError:
                self._claim(parent, local, False)
                continue
            except OSError as exc:
                if exc.errno not in (errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ):
                    raise
                local = f"renamed-{hashlib.sha256(os.fsencode(part)).hexdigest()[:12]}"
                local += PurePosixPath(part).suffix[:16]
                continue
            self._claim(parent, local, False)
            return rel, fd
        raise BundleError(f"no name for file {part!r} could be created here")


def _copy_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, sink: BinaryIO, room: int) -> int:
    """Copy one entry, counting: never more bytes than it declares, nor than `room`. A damaged
    entry (bad CRC, broken compressed data) is a BundleError like any other refusal."""
    copied = 0
    try:
        with archive.open(info) as source:
            while block := source.read(_COPY_BLOCK):
                copied += len(block)
                if copied > info.file_size or copied > room:
                    raise BundleError(
                        f"entry {info.filename!r} unpacks to more bytes than it declares or allowed"
                    )
                sink.write(block)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise BundleError(f"entry {info.filename!r} is damaged or cannot be read: {exc}") from None
    return copied


def extract(
    path: str | Path,
    destination: str | Path,
    limits: BundleLimits = BundleLimits(),
    names: LocalNames = LocalNames(),
) -> Unpacked:
    """Unpack an archive into destination, which must be absent or empty.

    Every entry is checked before anything is written; bytes are counted while writing. Returns
    what was written and which entries got another name (see `LocalNames`). On a refusal part of
    the archive may be written: unpack into a fresh folder and remove it on error."""
    target = Path(destination)
    target.mkdir(parents=True, exist_ok=True)
    target = target.resolve()
    if any(target.iterdir()):
        raise BundleError(f"{target} is not empty; an archive is only unpacked into an empty folder")
    result = Unpacked(bytes_written=0, files=0)
    with open_archive(path, limits) as archive:
        entries = check_entries(archive, limits)
        placer = _Placer(target, names)
        for info in archive.infolist():
            clean = _clean_name(info.filename, limits)
            if info.is_dir():
                parent = placer.folders(clean.split("/"))
                if parent != clean:
                    result.renamed[clean + "/"] = parent + "/"
        for info in entries:
            clean = _clean_name(info.filename, limits)
            *folders, leaf = clean.split("/")
            local, fd = placer.open_file(placer.folders(folders), leaf)
            if local != clean:
                result.renamed[clean] = local
            with os.fdopen(fd, "wb") as sink:
                result.bytes_written += _copy_entry(
                    archive, info, sink, limits.max_unpacked_bytes - result.bytes_written
                )
            result.files += 1
    if result.renamed:
        log.warning(
            "unpacking %s: %d name(s) cannot exist on this filesystem and were renamed:\n%s",
            path,
            len(result.renamed),
            describe_renames(result.renamed),
        )
    return result


def extract_new_folder(
    path: str | Path,
    final: str | Path,
    limits: BundleLimits = BundleLimits(),
    names: LocalNames = LocalNames(),
    prepare: Callable[[Path, Unpacked], None] | None = None,
) -> Unpacked:
    """Unpack into `final`, a folder that must not exist yet (or be empty), whole or not at all: the
    archive lands in a hidden staging folder beside it, `prepare` may add to it, then one rename
    puts it in place. On any error nothing stays behind and nothing that was there is touched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and (not final.is_dir() or final.is_symlink() or any(final.iterdir())):
        raise BundleError(f"{final} already exists; a result is only unpacked into a new folder")
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name[:40]}-", dir=final.parent))
    try:
        unpacked = extract(path, staging / "unpacked", limits, names)
        if prepare is not None:
            prepare(staging / "unpacked", unpacked)
        if final.is_dir() and not final.is_symlink():
            final.rmdir()  # empty (checked above); refuses if something arrived meanwhile
        (staging / "unpacked").rename(final)
        return unpacked
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def safe_extract(
    path: str | Path,
    destination: str | Path,
    limits: BundleLimits = BundleLimits(),
    names: LocalNames = LocalNames(),
) -> int:
    """`extract`, returning only the bytes written (renames are logged)."""
    return extract(path, destination, limits, names).bytes_written


def worker_renames(folder: Path, max_bytes: int = 16 * 1024 * 1024) -> dict[str, str]:
    """The renames an unpacked result's worker made while packing (`renamed` in RESULT_META: names
    that were not UTF-8 there); {} when there are none or the file is not what it should be."""
    path = folder / RESULT_META
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > max_bytes:
            return {}
        renamed = json.loads(path.read_text(encoding="utf-8", errors="replace")).get("renamed")
    except (OSError, ValueError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in renamed.items()} if isinstance(renamed, dict) else {}


def printable(name: str) -> str:
    """A name as it may be shown on a terminal: control characters, and bytes a name held that are
    not text, as escapes (a hostile name must not drive the terminal); the rest as it is."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in name)


def describe_renames(renamed: Mapping[str, str], limit: int = 10) -> str:
    """One line per renamed entry (printable however hostile the name), at most `limit`."""
    lines = [f"  {printable(old)} -> {printable(new)}" for old, new in list(renamed.items())[:limit]]
    if len(renamed) > limit:
        lines.append(f"  ... and {len(renamed) - limit} more")
    return "\n".join(lines)


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


def archive_name(name: str) -> str:
    """`name` as a ZIP can store it. A POSIX name is bytes and need not be UTF-8; ZIP names are
    UTF-8, so bytes that are not are written as visible \\xNN escapes instead of failing."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")


def stored_names(names: Iterable[str], reserved: Iterable[str] = ()) -> dict[str, str]:
    """{name: stored name} for names that a ZIP stores differently (`archive_name`), each kept
    unique among the others and the reserved ones with a '~N'."""
    wanted = list(names)
    used = set(reserved) | {name for name in wanted if archive_name(name) == name}
    renamed: dict[str, str] = {}
    for name in wanted:
        stored = archive_name(name)
        if stored == name:
            continue
        base, number = stored, 2
        while stored in used:
            stored = f"{base}~{number}"
            number += 1
        used.add(stored)
        renamed[name] = stored
    return renamed


def pack(
    destination: str | Path,
    files: Iterable[tuple[str, Path]] = (),
    extra: Mapping[str, bytes] = {},
    max_bytes: int | None = None,
) -> PackedBundle:
    """Write a ZIP of files (name in bundle, path on disk) plus in-memory extras.

    Entries named in `extra` win over files of the same name. Raises InvalidInput past max_bytes,
    naming the biggest files, before writing anything. A name a ZIP cannot store as it is gets a
    stored form (`archive_name`, kept unique), reported in `renamed`.
    """
    chosen = [(name, path) for name, path in files if name not in extra]
    sizes = [(name, path, path.stat().st_size) for name, path in chosen]
    total = sum(size for _, _, size in sizes) + sum(len(data) for data in extra.values())
    if max_bytes is not None and total > max_bytes:
        biggest = sorted(sizes, key=lambda item: -item[2])[:5]
        listing = ", ".join(f"{printable(name)} ({size / 1024**2:.1f} MiB)" for name, _, size in biggest)
        raise InvalidInput(
            f"the folder holds {total / 1024**2:.1f} MiB, over the {max_bytes / 1024**2:.0f} MiB limit. "
            f"Biggest files: {listing}. Add them to .hivemindignore or pick a smaller folder."
        )
    target = Path(destination)
    names: list[str] = []
    renamed = stored_names((name for name, _, _ in sizes), extra)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, path, _ in sizes:
            stored = renamed.get(name, name)
            archive.write(path, stored)
            names.append(stored)
        for name, data in extra.items():
            archive.writestr(name, data)
            names.append(name)
    return PackedBundle(
        path=target,
        files=len(names),
        unpacked_bytes=total,
        packed_bytes=target.stat().st_size,
        names=names,
        renamed=renamed,
    )
