"""uv, the installer every environment is built with: its binary, the lab's index settings, the
command lines, and what its output means (steps for the live view, a reason for a failure).

Index URLs reach uv through environment variables (UV_INDEX_URL, UV_EXTRA_INDEX_URL), never its
command line, so credentials in them are not in `ps`; any text shown to people goes through a
Redactor first. The package cache (UV_CACHE_DIR) is one folder per machine, shared by every build
of every worker there: uv locks it itself and writes entries atomically, so concurrent builds are
safe (https://docs.astral.sh/uv/concepts/cache/).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hivemind_nodepool.protocol.environment import python_minor

from .errors import EnvironmentBuildError
from .redaction import Redactor


def uv_binary() -> Path:
    """The uv binary that came with the `uv` package (or one on PATH)."""
    try:
        from uv import find_uv_bin

        return Path(find_uv_bin())
    except (ImportError, FileNotFoundError):
        pass
    scripts = Path(sysconfig.get_path("scripts")) / "uv"
    if scripts.exists():
        return scripts
    raise EnvironmentBuildError("uv is not installed on this worker: pip install uv")


@dataclass(frozen=True)
class IndexSettings:
    """Where packages come from: the worker's --index-url, --extra-index-url, --find-links,
    --offline, and the shared cache."""

    cache_dir: Path
    index_url: str = ""
    extra_index_urls: tuple[str, ...] = ()
    find_links: Path | None = None
    offline: bool = False
    redact: Redactor = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "redact", Redactor([self.index_url, *self.extra_index_urls]))

    def fingerprint(self) -> str:
        """Changes when the admin changes where packages come from (a remembered failure is retried
        then). A hash: the URLs' credentials are never written down."""
        text = "\0".join(
            [self.index_url, *self.extra_index_urls, str(self.find_links or ""), str(self.offline)]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def variables(self, cache_dir: str | None = None) -> dict[str, str]:
        """uv's environment: the cache, the indexes, and nothing read from the task's folder."""
        env = {
            "UV_CACHE_DIR": cache_dir or str(self.cache_dir),
            "UV_NO_CONFIG": "1",  # no uv.toml of the task's or the worker's folder counts
            "UV_PYTHON_DOWNLOADS": "never",
            "UV_NO_PROGRESS": "1",
            "NO_COLOR": "1",
            "UV_LINK_MODE": "copy",  # the cache may be on another filesystem than the environment
        }
        if self.index_url:
            env["UV_INDEX_URL"] = self.index_url
        if self.extra_index_urls:
            env["UV_EXTRA_INDEX_URL"] = " ".join(self.extra_index_urls)
        if self.offline:
            env["UV_OFFLINE"] = "1"
        return env

    def env_file(self, cache_dir: str) -> str:
        """The variables as a shell file a build container sources (the container's own
        environment would be kept in the committed image's configuration)."""
        return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in self.variables(cache_dir).items())


def install_args(
    python: str, requirements: str, *, prefix: str | None, exact: bool, find_links: list[str]
) -> list[str]:
    """`uv pip install` of a requirements file; exact: installed as pinned without resolving
    dependencies (a lock is the closure, and the worker's own packages provide the rest where uv
    cannot see them; `uv pip check` then finds a Python they do not support)."""
    args = ["pip", "install", "--python", python, "--color", "never", "-r", requirements]
    if prefix:
        args += ["--prefix", prefix]
    if exact:
        args.append("--no-deps")
    for folder in find_links:
        args += ["--find-links", folder]
    return args


_WOULD_DOWNLOAD = re.compile(r"^Would download (\d+) packages?")
_PREPARED = re.compile(r"^Prepared (\d+) packages?")
INSTALL_MARK = "::hivemind-install::"  # printed between the dry run and the install


class StepParser:
    """uv's output as the build's steps, one line each: resolving (said before uv runs), then from
    the dry run's plan "downloading N packages" (or that every package is cached), then
    "installing" once the downloads are prepared."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.lines: list[str] = []
        self.downloads = 0
        self._installing = False

    def feed(self, line: str) -> None:
        line = line.rstrip()
        if not line:
            return
        if line == INSTALL_MARK:
            if self.downloads:
                self.say(f"downloading {self.downloads} package{'s' * (self.downloads != 1)}")
            else:
                self._install("every package is in the package cache; installing")
            return
        self.lines.append(line)
        del self.lines[:-200]
        if match := _WOULD_DOWNLOAD.match(line):
            self.downloads = int(match[1])
        elif _PREPARED.match(line):
            self._install("installing")

    def _install(self, text: str) -> None:
        if not self._installing:
            self._installing = True
            self.say(text)


_SUMMARY = re.compile(r"^(?P<what>Resolved|Prepared|Installed) \d+ packages? in (?P<n>[\d.]+)(?P<unit>ms|s)$")
_SUMMARY_STEPS = {
    "Resolved": "uv: resolve",
    "Prepared": "uv: download and unpack",
    "Installed": "uv: install",
}


def uv_durations(output: str) -> dict[str, float]:
    """Seconds uv says each of its steps took, from its summary lines (a dry run's resolve and the
    install's resolve add up)."""
    seconds: dict[str, float] = {}
    for line in output.splitlines():
        if match := _SUMMARY.match(line.strip()):
            step = _SUMMARY_STEPS[match["what"]]
            value = float(match["n"]) / (1000 if match["unit"] == "ms" else 1)
            seconds[step] = seconds.get(step, 0.0) + value
    return seconds


_NO_VERSION = re.compile(r"there is no version of (?P<name>[A-Za-z0-9._-]+)==(?P<version>[^\s,]+)")
_NOT_FOUND = re.compile(
    r"Because (?P<name>[A-Za-z0-9._-]+) was not found in the (?P<where>package registry|provided "
    r"package locations|cache)"
)
_NEEDS_PYTHON = re.compile(
    r"(?P<name>[A-Za-z0-9._-]+)==(?P<version>[^\s,]+) (?:requires Python (?P<spec>[^\s,]+)|has no "
    r"wheels with a matching Python (?:version|ABI) tag)"
)
_HASH = re.compile(r"Hash mismatch for `(?P<name>[A-Za-z0-9._-]+)==(?P<version>[^`]+)`")
_FAILED = re.compile(r"Failed to (?P<what>download|build|install|fetch|prepare)[^`]*`(?P<what_of>[^`]+)`")


def _where(index: IndexSettings) -> str:
    if index.offline:
        return "in the package cache or the wheelhouse (this worker is --offline)"
    return "on the index" + (" or in the wheelhouse" if index.find_links else "")


def no_build_for(name: str, version: str, python: str, kernel_python: str, spec: str = "") -> str:
    """A package with no build for the worker's Python, naming both Pythons when they differ."""
    kernel = ""
    if kernel_python and python_minor(kernel_python) != python:
        kernel = f"; your kernel runs Python {python_minor(kernel_python)}"
    needs = f" (it requires Python {spec})" if spec else ""
    return f"{name} {version} has no build for Python {python}, which this worker runs{needs}{kernel}"


_CHECK_PYTHON = re.compile(r"The package `(?P<name>[^`]+)` requires Python (?P<spec>[^\s,]+), but")


def python_incompatibilities(check_output: str) -> list[tuple[str, str]]:
    """(package, Python it requires) for each line of `uv pip check` about the Python version."""
    return [(m["name"], m["spec"]) for m in _CHECK_PYTHON.finditer(check_output)]


def failure_reason(output: str, index: IndexSettings, python: str, kernel_python: str = "") -> str:
    """One line naming the package that broke the build, from uv's output."""
    if match := _NO_VERSION.search(output):
        return f"no version {match['version']} of {match['name']} {_where(index)}"
    if match := _NOT_FOUND.search(output):
        return f"{match['name']} is not {_where(index)}"
    if match := _NEEDS_PYTHON.search(output):
        return no_build_for(match["name"], match["version"], python, kernel_python, match["spec"])
    if match := _HASH.search(output):
        return f"the hash of {match['name']} {match['version']} does not match the one in the lock"
    if match := _FAILED.search(output):
        return f"{match['what_of']} failed to {match['what']}"
    errors = [line.strip() for line in output.splitlines() if line.strip().startswith(("error:", "\u00d7"))]
    return errors[-1] if errors else "the installer failed"


def build_failure(output: str, index: IndexSettings, python: str, kernel_python: str, code: int) -> str:
    """The whole message of a failed build: the reason, then the installer's last lines."""
    shown = index.redact(output)
    tail = "\n".join(shown.strip().splitlines()[-15:])
    reason = failure_reason(shown, index, python, kernel_python)
    return f"{reason} (uv exit {code}):\n{tail}"


def tree_size(folder: Path) -> int:
    """Bytes of the regular files under folder (0 when it is missing)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                stat = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            total += stat.st_size
    return total
