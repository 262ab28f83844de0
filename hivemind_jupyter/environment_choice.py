"""The environment of a notebook submitted from the file browser (the panel's run dialog).

The dialog's choice wins (`environment`, `requirements`, `image`, `python`, each checked). Without
one the notebook's kernel decides: when its kernelspec runs this server's Python, the packages are
captured from this Python (auto), as `%%hivemind` captures them from its kernel; otherwise this
server cannot see that kernel's packages, and the folder's requirements.txt is used, or, without
one, the bare runtime, with a line that says so.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from hivemind_nodepool.client.environment import EnvironmentChoice
from hivemind_nodepool.client.submission import find_entry, folder_requirements
from hivemind_nodepool.protocol.errors import InvalidInput

FLAGS = ("environment", "requirements", "image", "python")
MAX_FIELD = 1024  # environment, image, python: short names; requirements: checked by their rules
DEFAULT_KERNEL = "python3"


def _text(body: dict[str, Any], key: str, limit: int | None = MAX_FIELD) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{key} must be a string")
    if limit is not None and len(value) > limit:
        raise InvalidInput(f"{key} is longer than {limit} characters")
    return value


def _kernel_name(notebook: Path) -> str:
    try:
        metadata = json.loads(notebook.read_bytes()).get("metadata", {})
        name = metadata.get("kernelspec", {}).get("name")
    except (OSError, ValueError, AttributeError, RecursionError):
        return DEFAULT_KERNEL
    return name if isinstance(name, str) and name else DEFAULT_KERNEL


def runs_this_python(kernel: str, specs: Any) -> bool:
    """Whether the kernelspec starts this server's Python (the same environment's bin folder)."""
    try:
        argv = list(specs.get_kernel_spec(kernel).argv)
    except Exception:  # no such kernel, or a spec that cannot be read: not this Python
        return False
    if not argv or not isinstance(argv[0], str):
        return False
    program = argv[0] if os.path.isabs(argv[0]) else shutil.which(argv[0]) or argv[0]
    return Path(os.path.abspath(program)).parent == Path(os.path.abspath(sys.executable)).parent


def _from_kernel(
    target: Path, entry: str | None, specs: Any, python: str | None
) -> tuple[EnvironmentChoice, list[str]]:
    notebook = target if target.is_file() else target / find_entry(target, entry, 'the "entry" field')
    kernel = _kernel_name(notebook)
    if runs_this_python(kernel, specs):
        return EnvironmentChoice.from_options(python=python, flags=FLAGS), []
    requirements = folder_requirements(target)
    if requirements is not None:
        line = (
            f"the notebook's kernel ({kernel}) is not this server's Python, so its packages come "
            "from the folder's requirements.txt"
        )
        return EnvironmentChoice.from_options(requirements=requirements, python=python, flags=FLAGS), [line]
    line = (
        f"the notebook's kernel ({kernel}) is not this server's Python and its folder has no "
        "requirements.txt, so it runs with the bare runtime; add a requirements.txt, or choose the "
        "environment in the dialog"
    )
    return EnvironmentChoice.from_options("none", python=python, flags=FLAGS), [line]


def notebook_environment(
    body: dict[str, Any], target: Path, entry: str | None, specs: Any
) -> tuple[EnvironmentChoice, list[str]]:
    """The environment for a REST submission, and the lines to show about how it was chosen;
    InvalidInput (a 400) for anything malformed."""
    mode = _text(body, "environment") or None
    typed = _text(body, "requirements", limit=None)
    image = _text(body, "image") or None
    python = _text(body, "python") or None
    requirements = (typed.strip() + "\n").encode() if typed and typed.strip() else None
    if mode is None and requirements is None and image is None:
        return _from_kernel(target, entry, specs, python)
    return EnvironmentChoice.from_options(mode, requirements, image, python, flags=FLAGS), []
