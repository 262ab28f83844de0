"""The panel's task states (labextension/src/states.ts) mirror the Python ones and the proto enum.

states.ts is the one TypeScript definition; it cannot import Python, so this test reads its string
literals and compares them, set by set and name by name, with hivemind_nodepool.protocol.states.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol import states

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ROOT / "labextension" / "src"
STATES_TS = SOURCES / "states.ts"
MIRRORED_SETS = ("TERMINAL_STATES", "ON_WORKER_STATES", "UNFINISHED_STATES")
LITERAL = re.compile(r"'([A-Z][A-Z0-9_]*)'")


def _literals(text: str) -> list[str]:
    return LITERAL.findall(text)


def _ts_set(source: str, name: str) -> list[str]:
    match = re.search(
        rf"export const {name}\b[^=]*=\s*new Set<TaskState>\(\s*\[(?P<body>[^\]]*)\]\s*\)", source
    )
    assert match, f"states.ts has no `export const {name} = new Set<TaskState>([...])`"
    return _literals(match["body"])


def _ts_union(source: str) -> list[str]:
    match = re.search(r"export type TaskState\s*=(?P<body>[^;]*);", source)
    assert match, "states.ts has no `export type TaskState = ...;`"
    return _literals(match["body"])


def _proto_names() -> list[str]:
    """The enum's names in number order, without the zero value when it only means "unset"."""
    values = sorted(pb.TaskState.DESCRIPTOR.values, key=lambda v: v.number)
    return [v.name for v in values if not (v.number == 0 and v.name.endswith("UNSPECIFIED"))]


@pytest.fixture(scope="module")
def source() -> str:
    return STATES_TS.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", MIRRORED_SETS)
def test_each_set_equals_the_python_set(source: str, name: str) -> None:
    listed = _ts_set(source, name)
    assert len(listed) == len(set(listed)), f"{name} lists a state twice: {listed}"
    expected = {states.state_name(state) for state in getattr(states, name)}
    assert set(listed) == expected


def test_task_state_union_lists_the_proto_enum(source: str) -> None:
    union = _ts_union(source)
    assert len(union) == len(set(union)), f"TaskState lists a name twice: {union}"
    zero = pb.TaskState.Name(0)  # type: ignore[arg-type]
    assert [name for name in union if name != zero] == _proto_names()


def test_all_states_is_every_state_in_proto_order(source: str) -> None:
    match = re.search(r"export const ALL_STATES\b[^=]*=\s*\[(?P<body>[^\]]*)\]", source)
    assert match, "states.ts has no `export const ALL_STATES = [...]`"
    assert _literals(match["body"]) == _proto_names()


def test_no_other_source_defines_states() -> None:
    """states.ts is the only home: other modules import from it instead of writing their own copy."""
    pattern = re.compile(r"\btype TaskState\s*=|\b[A-Z_]*STATES\s*(?::[^=]*)?=(?!=)")
    offenders = [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for path in sorted(SOURCES.rglob("*.ts*"))
        if path != STATES_TS and "__tests__" not in path.parts
        for line in path.read_text(encoding="utf-8").splitlines()
        if pattern.search(line)
    ]
    assert not offenders, "task states defined outside states.ts:\n" + "\n".join(offenders)
