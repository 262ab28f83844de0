"""The environment a task runs with, chosen by the person or captured from this Python.

`--env auto` (the default) pins what the task imports: its modules (imports.py) mapped to the
distributions installed here, plus the closure of their requirements, each at the version
installed here (distributions.py). The standard library and what the worker's runtime provides are
left out; distributions no index can serve are built into wheels (wheels.py). `--env freeze` pins
every distribution here; `--requirements FILE` sends the person's own file, `--image NAME` names an
image the worker's admin allow-listed, and `--env none` runs on the bare runtime.

The result is what goes into the bundle (the lock, the wheels or requirements.txt), the manifest's
`environment`, and the lines to tell the person (what was captured, what could not be).
"""

from __future__ import annotations

import hashlib
import platform
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hivemind_nodepool.client import distributions, imports, wheels
from hivemind_nodepool.client.distributions import InstalledIndex
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.environment import (
    LOCK_PATH,
    REQUIREMENTS_PATH,
    WHEELS_DIR,
    check_image,
    check_mode,
    check_python_version,
    check_requirements,
    lock_text,
    python_minor,
)
from hivemind_nodepool.protocol.errors import InvalidInput
from hivemind_nodepool.protocol.units import format_size

GPU_FRAMEWORKS = ("torch", "jax", "tensorflow", "cupy")
OWN_DISTRIBUTION = "hivemind-jupyter"  # the client itself: a task never needs it
SUMMARY_NAMES = 5
_LOCAL_NOTE = "built here"


@dataclass(frozen=True)
class EnvironmentChoice:
    """What the person asked for (checked): a mode and what goes with it."""

    mode: str = "auto"
    requirements: bytes | None = None  # mode "requirements": the file's text
    image: str = ""
    python: str = ""  # "3.12": run only where this minor version is available

    @classmethod
    def from_options(
        cls,
        env: str | None = None,
        requirements: bytes | None = None,
        image: str | None = None,
        python: str | None = None,
        *,
        flags: tuple[str, str, str, str] = ("--env", "--requirements", "--image", "--python"),
    ) -> EnvironmentChoice:
        """The choice from options as typed (None: not given); InvalidInput when they contradict
        each other or one is malformed. `flags` names the options in messages."""
        env_flag, requirements_flag, image_flag, python_flag = flags
        if requirements is not None and image:
            raise InvalidInput(f"give {requirements_flag} or {image_flag}, not both")
        implied = "requirements" if requirements is not None else "image" if image else ""
        try:
            mode = check_mode(env or implied)
        except InvalidInput:
            raise InvalidInput(
                f"{env_flag} must be auto, none, freeze, requirements or image, not {env!r}"
            ) from None
        if implied and env and mode != implied:
            raise InvalidInput(f"{env_flag} {mode} and {implied_flag(implied, flags)} contradict each other")
        if mode == "requirements":
            if requirements is None:
                raise InvalidInput(f"{env_flag} requirements needs the file: {requirements_flag} FILE")
            check_requirements(requirements)
        if mode == "image":
            if not image:
                raise InvalidInput(f"{env_flag} image needs the image's name: {image_flag} NAME")
            check_image(image)
        if python:
            try:
                check_python_version(python)
            except InvalidInput as exc:
                raise InvalidInput(f"{python_flag}: {exc}") from None
        return cls(mode=mode, requirements=requirements, image=image or "", python=python or "")


def implied_flag(implied: str, flags: tuple[str, str, str, str]) -> str:
    return flags[1] if implied == "requirements" else flags[2]


@dataclass
class Sources:
    """What a task brings that can import things."""

    code: list[str] = field(default_factory=list)  # cells' code, IPython syntax allowed
    files: list[tuple[str, Path]] = field(default_factory=list)  # bundle files: name, path on disk
    names: list[str] = field(default_factory=list)  # every name in the bundle
    values: list[Any] = field(default_factory=list)  # pushed objects

    def modules(self) -> set[str]:
        found: set[str] = set()
        for code in self.code:
            found |= imports.modules_in_code(code)
        found |= imports.modules_in_files(self.files)
        found |= imports.modules_of_values(self.values)
        return found


@dataclass
class CapturedEnvironment:
    """The manifest's environment, the bundle entries that carry it, and what to tell the person."""

    environment: pb.Environment
    entries: dict[str, bytes] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    seconds: float = 0.0  # how long the capture took


@dataclass
class _Lock:
    pins: dict[str, str] = field(default_factory=dict)  # key -> version
    top: list[str] = field(default_factory=list)  # keys the task itself imports
    built: list[wheels.BuiltWheel] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)


def gpu_hint(modules: Iterable[str], gpus: int, subject: str = "cell") -> str | None:
    """One line when the code imports a GPU framework but asks for no GPU."""
    if gpus > 0:
        return None
    found = [name for name in GPU_FRAMEWORKS if name in set(modules)]
    if not found:
        return None
    return f"this {subject} imports {found[0]} but asks for no GPU: add --gpus 1 to run it on a GPU"


def _not_packages(sources: Sources) -> set[str]:
    standard = set(sys.stdlib_module_names) | set(sys.builtin_module_names)
    return standard | imports.bundle_modules(sources.names)


def _auto_roots(index: InstalledIndex, modules: set[str], lock: _Lock) -> dict[str, set[str]]:
    roots: dict[str, set[str]] = {}
    for module in sorted(modules):
        keys = index.distributions_of(module)
        if keys:
            roots.update({key: set() for key in keys})
            continue
        broken = index.broken_for(module)
        if broken is not None:
            lock.broken.append(f"{module}: {broken.line()}")
        else:
            lock.unmapped.append(module)
    return roots


def _choose(index: InstalledIndex, mode: str, modules: set[str], lock: _Lock) -> set[str]:
    runtime = distributions.runtime_keys(index)
    if mode == "freeze":
        lock.broken.extend(item.line() for item in index.broken)
        left_out = runtime | distributions.INSTALLER_TOOLS | {OWN_DISTRIBUTION}
        return {key for key in index.by_key if key not in left_out}
    roots = _auto_roots(index, modules, lock)
    lock.top = sorted(key for key in roots if key not in runtime)
    return {key for key in distributions.closure(index, roots) if key not in runtime}


def _pin(index: InstalledIndex, keys: set[str], lock: _Lock) -> None:
    for key in sorted(keys):
        dist = index.by_key[key]
        if dist.direct_url is None:
            lock.pins[key] = dist.version
            continue
        built = wheels.build_wheel(dist, index)
        lock.built.append(built)
        lock.pins[key] = built.version


def _summary(index: InstalledIndex, mode: str, lock: _Lock) -> str:
    if not lock.pins:
        return "no packages beyond the runtime"
    if mode == "freeze":
        return f"{len(lock.pins)} packages of the kernel (freeze)"
    local = {built.key for built in lock.built}

    def named(key: str) -> str:
        note = f" ({_LOCAL_NOTE})" if key in local else ""
        return f"{index.by_key[key].name} {lock.pins[key]}{note}"

    shown = [named(key) for key in lock.top[:SUMMARY_NAMES]]
    more = len(lock.top) - len(shown)
    text = ", ".join(shown) + (f" and {more} more" if more > 0 else "")
    dependencies = len(lock.pins) - len(lock.top)
    if dependencies > 0:
        text += f" + {dependencies} dependenc{'y' if dependencies == 1 else 'ies'}"
    return text


def _lock_file(lock: _Lock) -> str:
    """The pinned lines, then one comment per wheel built here: its contents' hash makes the lock
    (and so the environment's identity) change when the package's code does."""
    text = lock_text(lock.pins.items())
    for built in sorted(lock.built, key=lambda b: b.key):
        text += f"# {built.key}: {WHEELS_DIR}/{built.path.name} record-sha256={built.contents_sha256}\n"
    return text


def _wheel_entries(built: list[wheels.BuiltWheel], max_bytes: int | None) -> dict[str, bytes]:
    total = sum(item.path.stat().st_size for item in built)
    if max_bytes is not None and total > max_bytes:
        biggest = max(built, key=lambda item: item.path.stat().st_size)
        raise InvalidInput(
            f"the wheels built here for the environment take {format_size(total)}, over the bundle "
            f"limit of {format_size(max_bytes)} (the biggest: {biggest.path.name}); install that "
            "package from an index, or choose --env none or --requirements FILE"
        )
    return {f"{WHEELS_DIR}/{item.path.name}": item.path.read_bytes() for item in built}


def _locked(
    choice: EnvironmentChoice, sources: Sources, modules: set[str], max_bytes: int | None
) -> CapturedEnvironment:
    index = distributions.installed()
    lock = _Lock()
    keys = _choose(index, choice.mode, modules - _not_packages(sources), lock)
    _pin(index, keys, lock)
    text = _lock_file(lock)
    check_requirements(text)
    summary = _summary(index, choice.mode, lock)
    captured = CapturedEnvironment(
        pb.Environment(
            mode=choice.mode,
            summary=summary,
            package_count=len(lock.pins),
            lock_sha256=hashlib.sha256(text.encode()).hexdigest(),
        ),
        entries={LOCK_PATH: text.encode(), **_wheel_entries(lock.built, max_bytes)},
    )
    if lock.pins:  # a cell that needs nothing beyond the runtime gets no line
        captured.notices.append(f"environment: {summary}")
    if lock.unmapped:
        captured.notices.append(
            f"no installed package provides {', '.join(lock.unmapped)}: left out of the environment "
            "(a module of your own travels with --dir; a package, with --requirements FILE)"
        )
    captured.notices.extend(lock.broken)
    return captured


def _chosen(choice: EnvironmentChoice) -> CapturedEnvironment:
    """The modes where the person chose: requirements, image, none."""
    if choice.mode == "requirements":
        data = choice.requirements or b""
        count = len(check_requirements(data))
        summary = f"{REQUIREMENTS_PATH}: {count} package{'' if count == 1 else 's'}"
        environment = pb.Environment(
            mode="requirements",
            summary=summary,
            package_count=count,
            lock_sha256=hashlib.sha256(data).hexdigest(),
        )
        return CapturedEnvironment(environment, {REQUIREMENTS_PATH: data}, [f"environment: {summary}"])
    if choice.mode == "image":
        return CapturedEnvironment(
            pb.Environment(mode="image", image=choice.image, summary=f"image {choice.image}"),
            notices=[f"environment: the image {choice.image}"],
        )
    return CapturedEnvironment(pb.Environment(mode="none", summary="the bare runtime"))


def capture(
    choice: EnvironmentChoice,
    sources: Sources,
    gpus: int = 0,
    max_bytes: int | None = None,
    subject: str = "cell",
) -> CapturedEnvironment:
    """The environment for a task: the lock (and wheels) for auto and freeze, the person's own
    choice otherwise, with the kernel's Python and the lines to show."""
    started = time.perf_counter()
    modules = sources.modules()
    if choice.mode in ("auto", "freeze"):
        captured = _locked(choice, sources, modules, max_bytes)
    else:
        captured = _chosen(choice)
    kernel = platform.python_version()
    captured.environment.python_version = choice.python or kernel
    captured.environment.require_python = bool(choice.python)
    pinned_here = choice.mode in ("auto", "freeze")
    if choice.python and python_minor(choice.python) != python_minor(kernel) and pinned_here:
        captured.notices.append(
            f"the packages were pinned in Python {kernel}; the task asks for Python {choice.python}, "
            "so the worker resolves the same pins for that Python"
        )
    hint = gpu_hint(modules, gpus, subject)
    if hint:
        captured.notices.append(hint)
    captured.seconds = time.perf_counter() - started
    return captured
