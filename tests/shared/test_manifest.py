"""Manifest validation in process: every refusal names its field, and the first problem wins.

tests/nodepool/test_bad_input.py checks that the pool refuses these over gRPC and stores nothing;
here each check is exercised directly, including the limits that test does not reach.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol import manifest as manifests
from hivemind_nodepool.protocol.errors import InvalidInput


def build(**fields: Any) -> pb.Manifest:
    """A valid manifest (main.ipynb, 1 CPU) with the given fields replaced."""
    resources = {k: fields.pop(k) for k in ("cpus", "memory_bytes", "gpus") if k in fields}
    labels = fields.pop("labels", {})
    outputs = fields.pop("outputs", [])
    pull_variables = fields.pop("pull_variables", [])
    fields.setdefault("entry_notebook", "main.ipynb")
    resources.setdefault("cpus", 1.0)
    manifest = pb.Manifest(resources=pb.Resources(**resources), **fields)
    manifest.labels.update(labels)
    manifest.outputs.extend(outputs)
    manifest.pull_variables.extend(pull_variables)
    return manifest


def test_a_full_manifest_at_every_limit_is_accepted() -> None:
    manifests.validate(
        build(
            name="x" * manifests.MAX_NAME,
            entry_notebook="analysis/run.ipynb",
            parameters_json=json.dumps({"alpha": 0.5, "_n2": [1, 2]}),
            cpus=manifests.MAX_CPUS,
            memory_bytes=manifests.MAX_MEMORY,
            gpus=manifests.MAX_GPUS,
            labels={f"k{i}": "v" for i in range(manifests.MAX_LABELS)},
            timeout_seconds=3600,
            max_retries=manifests.MAX_RETRIES,
            outputs=["outputs/**"] * manifests.MAX_OUTPUTS,
            pull_variables=["result"] * manifests.MAX_PULL_VARIABLES,
            priority=-manifests.MAX_PRIORITY,
        ),
        max_timeout=3600,
    )
    # Zeros mean "the pool's default" and an empty manifest's optional parts are fine.
    manifests.validate(build(cpus=0.0, max_retries=-1, timeout_seconds=0, parameters_json=""))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "x" * (manifests.MAX_NAME + 1)}, "task name is longer than 200"),
        ({"name": "two\nlines"}, "control characters"),
        ({"entry_notebook": ""}, "no entry notebook"),
        ({"entry_notebook": "main.py"}, "not a .ipynb file"),
        ({"entry_notebook": "/abs/main.ipynb"}, "relative path inside the bundle"),
        ({"entry_notebook": "sub\\main.ipynb"}, "relative path inside the bundle"),
        ({"entry_notebook": "a/../../main.ipynb"}, "relative path inside the bundle"),
        ({"entry_notebook": "a/" * 520 + "main.ipynb"}, "relative path inside the bundle"),
        ({"parameters_json": json.dumps({"x": "y" * manifests.MAX_PARAMETERS_JSON})}, "larger than"),
        ({"parameters_json": "{not json"}, "not valid JSON"),
        ({"parameters_json": "[1, 2]"}, "must be a JSON object"),
        ({"parameters_json": '{"not an identifier": 1}'}, "parameter name 'not an identifier'"),
        ({"cpus": -0.5}, "cpus must be a non-negative number"),
        ({"cpus": float("nan")}, "cpus must be a non-negative number"),
        ({"cpus": float("inf")}, "cpus must be a non-negative number"),
        ({"cpus": 1025.0}, r"cpus 1025 is more than any machine has \(limit 1024\)"),
        ({"memory_bytes": -1}, "memory cannot be negative"),
        ({"memory_bytes": manifests.MAX_MEMORY + 1}, "16 TiB"),
        ({"gpus": -1}, "gpus cannot be negative"),
        ({"gpus": manifests.MAX_GPUS + 1}, r"gpus 65 is more than any machine has \(limit 64\)"),
        ({"labels": {f"k{i}": "v" for i in range(manifests.MAX_LABELS + 1)}}, "at most 32 labels"),
        ({"labels": {"bad key!": "v"}}, "label name 'bad key!'"),
        ({"labels": {"-leading": "v"}}, "label name '-leading'"),
        ({"labels": {"gpu": "a 100"}}, "label value 'a 100' for 'gpu'"),
        ({"timeout_seconds": -1}, "timeout cannot be negative"),
        ({"max_retries": -2}, "max_retries must be between 0 and 10"),
        ({"max_retries": manifests.MAX_RETRIES + 1}, "max_retries must be between 0 and 10"),
        ({"outputs": ["o"] * (manifests.MAX_OUTPUTS + 1)}, "at most 64 output patterns"),
        ({"outputs": [""]}, "1-256 characters"),
        ({"outputs": ["x" * 257]}, "1-256 characters"),
        ({"outputs": ["/etc/**"]}, "relative path with '/' separators"),
        ({"outputs": ["out\\*.csv"]}, "relative path with '/' separators"),
        ({"outputs": ["a\x00b"]}, "relative path with '/' separators"),
        ({"outputs": ["outputs/../../x"]}, "may not climb out"),
        ({"pull_variables": ["v"] * (manifests.MAX_PULL_VARIABLES + 1)}, "at most 64 variables"),
        ({"pull_variables": ["1abc"]}, "variable name '1abc' is not a Python identifier"),
        ({"priority": manifests.MAX_PRIORITY + 1}, "priority must be between -1000 and 1000"),
        ({"priority": -manifests.MAX_PRIORITY - 1}, "priority must be between -1000 and 1000"),
    ],
)
def test_each_bad_field_is_named(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        manifests.validate(build(**fields))


def test_the_pools_timeout_limit_applies_only_when_given() -> None:
    long = build(timeout_seconds=7200)
    manifests.validate(long)
    manifests.validate(long, max_timeout=7200)
    with pytest.raises(InvalidInput, match=r"7200 s is longer than the pool allows \(3600 s\)"):
        manifests.validate(long, max_timeout=3600.0)


def test_the_first_problem_in_field_order_is_reported() -> None:
    everything_wrong = build(
        name="a\tb",
        entry_notebook="main.py",
        parameters_json="[]",
        cpus=-1.0,
        labels={"bad key": "v"},
        timeout_seconds=-1,
        max_retries=99,
        outputs=["../x"],
        pull_variables=["1"],
        priority=10**6,
    )
    expected = [
        ("name", "control characters"),
        ("entry_notebook", "not a .ipynb"),
        ("parameters_json", "JSON object"),
        ("resources", "non-negative"),
        ("labels", "label name"),
        ("timeout_seconds", "timeout cannot be negative"),
        ("max_retries", "max_retries"),
        ("outputs", "climb out"),
        ("pull_variables", "variable name"),
        ("priority", "priority"),
    ]
    for field, message in expected:
        with pytest.raises(InvalidInput, match=message):
            manifests.validate(everything_wrong)
        everything_wrong.ClearField(field)
        if field == "entry_notebook":
            everything_wrong.entry_notebook = "main.ipynb"
    manifests.validate(everything_wrong)


def test_entry_present_lists_the_bundles_notebooks() -> None:
    manifest = build(entry_notebook="main.ipynb")
    manifests.check_entry_present(manifest, ["data.csv", "main.ipynb"])
    with pytest.raises(InvalidInput, match=r"not in the bundle; notebooks in the bundle: a\.ipynb, b\.ipynb"):
        manifests.check_entry_present(manifest, ["b.ipynb", "a.ipynb", "x.csv"])
    with pytest.raises(InvalidInput, match="the bundle has no notebooks"):
        manifests.check_entry_present(manifest, ["x.csv"])


def test_defaults_fill_only_what_is_unset() -> None:
    filled = manifests.with_defaults(build(entry_notebook="sub/run.ipynb", max_retries=-1), 600.0, 2)
    assert filled.name == "run" and filled.parameters_json == "{}"
    assert filled.timeout_seconds == 600 and filled.max_retries == 2
    assert list(filled.outputs) == list(manifests.DEFAULT_OUTPUTS)
    kept = manifests.with_defaults(
        build(name="n", parameters_json='{"a": 1}', timeout_seconds=5, max_retries=0, outputs=["o/*"]),
        600.0,
        2,
    )
    assert (kept.name, kept.parameters_json, kept.timeout_seconds, kept.max_retries, list(kept.outputs)) == (
        "n",
        '{"a": 1}',
        5,
        0,
        ["o/*"],
    )


def test_code_preview_is_bounded() -> None:
    from hivemind_nodepool.protocol.manifest import MAX_CODE_PREVIEW, code_preview

    assert code_preview("\n\na = 1\nb = 2\n") == "a = 1\nb = 2"
    long_lines = "é" * 5000
    assert len(code_preview(long_lines).encode()) <= MAX_CODE_PREVIEW
    too_big = pb.Manifest(name="x", entry_notebook="main.ipynb", code_preview="y" * (MAX_CODE_PREVIEW + 1))
    with pytest.raises(InvalidInput, match="code preview"):
        manifests.validate(too_big)
