"""The phases' labels: the Python ones (hivemind_nodepool.protocol.phases), what `hivemind logs`
prints, and the panel's copy (labextension/src/phases.ts), which cannot import Python, so this test
reads its PHASE_LABELS literal and compares it name by name."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from hivemind_nodepool.cli.output import print_event
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol import phases

PHASES_TS = Path(__file__).resolve().parents[2] / "labextension" / "src" / "phases.ts"


def _ts_labels() -> list[tuple[str, str]]:
    source = PHASES_TS.read_text(encoding="utf-8")
    match = re.search(r"export const PHASE_LABELS\b[^=]*=\s*\{(?P<body>[^}]*)\}", source)
    assert match, "phases.ts has no `export const PHASE_LABELS = {...}`"
    return re.findall(r"(\w+):\s*'([^']*)'", match["body"])


def test_the_panel_names_each_phase_as_python_does() -> None:
    assert _ts_labels() == list(phases.LABELS.items())
    assert tuple(phases.LABELS) == phases.PHASES


@pytest.mark.parametrize(
    ("name", "details", "label"),
    [
        ("fetching", {"bytes": 3 * 1024 * 1024, "cached": False}, "fetching the bundle (3.0 MiB)"),
        ("fetching", {"bytes": 10, "cached": True}, "fetching the bundle (cached)"),
        ("environment", {"cached": True}, "reusing the environment"),
        ("environment", {"step": "resolving"}, "building the environment: resolving"),
        ("container", {"sandbox": "process"}, "starting the task's process"),
        ("kernel", None, "starting the kernel"),
        ("new-phase", None, "new-phase"),
    ],
)
def test_phase_labels(name: str, details: dict | None, label: str) -> None:
    assert phases.phase_label(name, details) == label


def test_details_that_are_not_an_object_are_none() -> None:
    assert phases.phase_details("") == {}
    assert phases.phase_details("[1, 2]") == {}
    assert phases.phase_details("{not json") == {}
    assert phases.phase_details('{"step": "x"}') == {"step": "x"}


def test_hivemind_logs_prints_a_phase_as_a_marked_line() -> None:
    out, err = io.StringIO(), io.StringIO()
    event = pb.TaskEvent(kind=pb.TaskEvent.PHASE, text="environment", data_json=json.dumps({"cached": True}))
    print_event(event, out, err)
    assert (out.getvalue(), err.getvalue()) == ("", "[hivemind] reusing the environment\n")
