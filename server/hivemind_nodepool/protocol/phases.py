"""The phases of an attempt on a worker, and how people read them.

A task's states (PREPARING, RUNNING, UPLOADING) say little about where the time goes at the start:
PREPARING covers a download and maybe a 20 s environment build, RUNNING a container and a kernel
starting before the first cell. The worker reports finer phases as PHASE events (`text` = the
name, `data_json` = details); the live view, `hivemind logs` and the panel's timeline show them.
The panel's copy is labextension/src/phases.ts (tests/shared/test_phases_mirror.py compares them).

    fetching     the bundle: downloaded, or found in the worker's cache (details: bytes, cached)
    environment  the task's packages: built, or reused (details: step, cached); only with
                 requirements; a build may report its steps as more events of this phase
    container    the sandbox is created and started (details: sandbox = "container" or "process")
    kernel       the runner inside the sandbox starts the notebook's kernel
    running      the first cell is about to run
    uploading    the result goes back to the pool
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .units import format_size

FETCHING = "fetching"
ENVIRONMENT = "environment"
CONTAINER = "container"
KERNEL = "kernel"
RUNNING = "running"
UPLOADING = "uploading"

PHASES = (FETCHING, ENVIRONMENT, CONTAINER, KERNEL, RUNNING, UPLOADING)
# The runner runs inside the sandbox, beside the task's code: only these may come from it.
RUNNER_PHASES = frozenset({KERNEL, RUNNING})
MAX_STEP_CHARS = 200

LABELS = {
    FETCHING: "fetching the bundle",
    ENVIRONMENT: "building the environment",
    CONTAINER: "starting the container",
    KERNEL: "starting the kernel",
    RUNNING: "running",
    UPLOADING: "uploading the result",
}


def phase_details(data_json: str) -> dict[str, Any]:
    """A PHASE event's details ({} when there are none or they are not a JSON object)."""
    if not data_json:
        return {}
    try:
        details = json.loads(data_json)
    except ValueError:
        return {}
    return details if isinstance(details, dict) else {}


def phase_label(name: str, details: Mapping[str, Any] | None = None) -> str:
    """What a person reads for a phase: "fetching the bundle (1.2 MiB)", "building the
    environment: installing requirements.txt", "starting the kernel"."""
    details = details or {}
    label = LABELS.get(name, name)
    if name == FETCHING:
        size = details.get("bytes")
        if details.get("cached"):
            label = f"{label} (cached)"
        elif isinstance(size, int) and size > 0:
            label = f"{label} ({format_size(size)})"
    elif name == ENVIRONMENT and details.get("cached"):
        label = "reusing the environment"
    elif name == CONTAINER and details.get("sandbox") == "process":
        label = "starting the task's process"
    step = details.get("step")
    if isinstance(step, str) and step.strip():
        label = f"{label}: {step.strip()[:MAX_STEP_CHARS]}"
    return label
