"""The packages a task runs with: modes, where a bundle keeps its lock, and checking requirement lines.

The user's side (hivemind_jupyter.environment, the CLI, the panel) writes a lock: one pinned
requirement per line (`name==version`), plus wheels it built itself for distributions no index can
serve (editable and local-path installs). The worker (hivemind_worker.environments) builds an
environment from it. Both check requirement text with `check_requirements`, so a bad line is
refused with the same message before upload and again on the worker, which trusts no bundle.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from hivemind_nodepool.protocol.errors import InvalidInput

MODES = ("auto", "freeze", "requirements", "none", "image")
DEFAULT_MODE = "auto"

LOCK_PATH = ".hivemind/environment.lock"  # in the bundle: the pinned requirements
WHEELS_DIR = ".hivemind/wheels"  # in the bundle: wheels built on the user's side
REQUIREMENTS_PATH = "requirements.txt"  # in the bundle: the user's own file (mode "requirements")

MAX_REQUIREMENT_LINES = 2000  # a `pip freeze` of a large scientific environment is a few hundred
MAX_REQUIREMENTS_BYTES = 1024 * 1024
MAX_LINE = 1000

# PEP 508 names: letters, digits, '.', '_' and '-', starting and ending with a letter or digit.
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
_REQUIREMENT = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?P<extras>\[[A-Za-z0-9._,\s-]*\])?\s*"
    r"(?P<spec>(?:(?:===|==|~=|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+\s*,?\s*)*)"
    r"(?P<marker>;.*)?$"
)
_HASH = re.compile(r"--hash=(sha256|sha384|sha512):([0-9a-fA-F]+)")
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]{0,254}$")
# Options a task's requirements may not carry: they would point the worker's installer somewhere
# else (an index, another file, a local path) than its admin chose.
_REFUSED_OPTIONS = {
    "-e": "editable installs are built into wheels on your side: install the package in your kernel "
    "and leave the environment to --env auto",
    "--editable": "see -e",
    "-r": "one file only: put the lines of the other file in this one",
    "--requirement": "see -r",
    "-c": "constraints files are not supported: pin the versions in this file",
    "--constraint": "see -c",
    "-i": "the index is the worker's: its admin sets --index-url",
    "--index-url": "the index is the worker's: its admin sets --index-url",
    "--extra-index-url": "the index is the worker's: its admin sets --extra-index-url",
    "-f": "the worker's admin sets --find-links",
    "--find-links": "the worker's admin sets --find-links",
    "--trusted-host": "the worker's admin chooses the indexes",
    "--no-index": "the worker's admin sets --offline",
}


@dataclass(frozen=True)
class Requirement:
    """One requirement line: its normalised name, the line without comments, and its hashes."""

    name: str
    line: str
    pinned_version: str | None  # "1.2.3" for `name==1.2.3`, else None
    hashes: tuple[str, ...] = ()  # "sha256:HEX"


def normalise_name(name: str) -> str:
    """PEP 503's normal form: lower case, runs of '-', '_' and '.' made one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def check_mode(mode: str) -> str:
    """The mode, or InvalidInput naming the ones there are ('' means the default)."""
    chosen = mode or DEFAULT_MODE
    if chosen not in MODES:
        raise InvalidInput(f"--env must be one of {', '.join(MODES)}, not {mode!r}")
    return chosen


def check_image(image: str) -> str:
    if not _IMAGE.match(image):
        raise InvalidInput(
            f"--image {image!r} is not an image name (lower-case letters, digits and ._/:@-, "
            "e.g. lab/analysis:2024)"
        )
    return image


def check_python_version(version: str) -> str:
    """'3.11' or '3.11.7'; InvalidInput otherwise."""
    if not re.match(r"^3\.\d{1,2}(\.\d{1,3})?$", version):
        raise InvalidInput(f"{version!r} is not a Python version such as 3.11 or 3.11.7")
    return version


def python_minor(version: str) -> str:
    """'3.11.7' -> '3.11'."""
    return ".".join(version.split(".")[:2])


def _logical_lines(text: str) -> Iterable[tuple[int, str]]:
    """(first line number, line) with backslash continuations joined and comments dropped."""
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        line = raw.split(" #", 1)[0] if not raw.lstrip().startswith("#") else ""
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, (pending + line).strip()
        pending = ""
    if pending.strip():
        yield start, pending.strip()


def _check_line(number: int, line: str) -> Requirement:
    where = f"requirements line {number}"
    if len(line) > MAX_LINE:
        raise InvalidInput(f"{where} is longer than {MAX_LINE} characters")
    hashes = tuple(f"{algo}:{value.lower()}" for algo, value in _HASH.findall(line))
    body = _HASH.sub("", line).strip()
    first = body.split()[0] if body else ""
    option = first.split("=", 1)[0]
    if option.startswith("-"):
        why = _REFUSED_OPTIONS.get(option, "options are not supported in a task's requirements")
        raise InvalidInput(f"{where}: {option} is not allowed ({why})")
    if "/" in body.split(";")[0] or "\\" in body or body.startswith("."):
        raise InvalidInput(
            f"{where}: {body[:80]!r} is a path or URL, not a package name; a package of your own is "
            "sent as a wheel by --env auto when it is installed in your kernel"
        )
    match = _REQUIREMENT.match(body)
    if not match or not _NAME.match(match["name"]):
        raise InvalidInput(f"{where}: {body[:80]!r} is not a requirement such as numpy==2.1.0")
    spec = re.sub(r"\s+", "", match["spec"] or "")
    pinned = spec[2:] if spec.startswith("==") and "," not in spec and "*" not in spec else None
    for algo_value in hashes:
        algo, value = algo_value.split(":")
        if len(value) != {"sha256": 64, "sha384": 96, "sha512": 128}[algo]:
            raise InvalidInput(
                f"{where}: the {algo} hash is {len(value)} hex digits long, which no {algo} is"
            )
    return Requirement(normalise_name(match["name"]), body, pinned, hashes)


def check_requirements(text: str | bytes) -> list[Requirement]:
    """Every requirement in a requirements file or lock, or InvalidInput naming the first bad line.

    Refused: options that change where packages come from (-e, -r, --index-url, ...), paths and
    URLs, lines that are not requirements, malformed hashes, a name twice, more than
    MAX_REQUIREMENT_LINES requirements or MAX_REQUIREMENTS_BYTES of text."""
    data = text.encode() if isinstance(text, str) else text
    if len(data) > MAX_REQUIREMENTS_BYTES:
        raise InvalidInput(f"the requirements are larger than {MAX_REQUIREMENTS_BYTES // 1024} KiB")
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("the requirements are not UTF-8 text") from None
    found: list[Requirement] = []
    seen: dict[str, int] = {}
    for number, line in _logical_lines(decoded):
        if not line:
            continue
        requirement = _check_line(number, line)
        if requirement.name in seen:
            raise InvalidInput(
                f"requirements line {number}: {requirement.name} is already required on line "
                f"{seen[requirement.name]}"
            )
        seen[requirement.name] = number
        found.append(requirement)
        if len(found) > MAX_REQUIREMENT_LINES:
            raise InvalidInput(
                f"the requirements name more than {MAX_REQUIREMENT_LINES} packages; "
                "use --env auto (what the cell imports) instead of --env freeze, or an --image"
            )
    return found


def lock_text(pins: Iterable[tuple[str, str]]) -> str:
    """A lock from (name, version) pairs: sorted by name, one `name==version` a line."""
    lines = sorted({f"{normalise_name(name)}=={version}" for name, version in pins})
    return "".join(line + "\n" for line in lines)
