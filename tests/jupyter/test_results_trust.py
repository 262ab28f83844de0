"""Reading what a worker sent back, when the worker may be someone else's machine: pulled variables
in forms that cannot run code, and display data made safe for the browser."""

from __future__ import annotations

import base64
import io
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hivemind_jupyter.results import VARIABLES_FILE, display_bundle, load_pulled, untrusted_bundle


class RunsCode:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (self.code,))


def write_variables(folder: Path, payload: dict[str, Any]) -> Path:
    path = folder / VARIABLES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))
    return folder


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_pickle_runs_only_when_the_user_allows_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = b64(pickle.dumps(RunsCode(f"open({str(marker)!r}, 'w').close()")))
    folder = write_variables(tmp_path, {"x": {"type": "builtins.int", "pickle": evil}})
    values, problems = load_pulled(folder, ["x"])
    assert values == {} and not marker.exists()
    assert "--pull-pickle" in problems["x"] and "trusted_pools" in problems["x"]
    values, problems = load_pulled(folder, ["x"], allow_pickle=True)
    assert marker.exists() and problems == {}


def test_an_npy_that_hides_a_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    buffer = io.BytesIO()
    np.save(
        buffer, np.array([RunsCode(f"open({str(marker)!r}, 'w').close()")], dtype=object), allow_pickle=True
    )
    folder = write_variables(tmp_path, {"a": {"npy": b64(buffer.getvalue())}})
    values, problems = load_pulled(folder, ["a"])
    assert values == {} and not marker.exists() and "a" in problems


def test_only_the_variables_asked_for_are_read(tmp_path: Path) -> None:
    folder = write_variables(
        tmp_path, {"x": {"json": 1}, "y": {"json": 2}, "z": {"error": "name 'z' is not defined"}}
    )
    assert load_pulled(folder, ["x", "z"]) == ({"x": 1}, {"z": "name 'z' is not defined"})
    (folder / VARIABLES_FILE).write_text("[" * 100_000)  # would be a RecursionError if read
    assert load_pulled(folder, []) == ({}, {})
    assert "unreadable" in load_pulled(folder, ["x"])[1]["x"]


def test_safe_forms_are_read_back_exactly(tmp_path: Path) -> None:
    import pandas as pd

    buffer = io.BytesIO()
    np.save(buffer, np.eye(2, dtype=np.float16), allow_pickle=False)
    scalar = io.BytesIO()
    np.save(scalar, np.asarray(np.int8(7)), allow_pickle=False)
    frame = pd.DataFrame({"a": [1, 2]}, index=["p", "q"])
    parquet = io.BytesIO()
    frame.to_parquet(parquet, engine="pyarrow")
    folder = write_variables(
        tmp_path,
        {
            "arr": {"npy": b64(buffer.getvalue())},
            "i8": {"npy": b64(scalar.getvalue()), "scalar": True},
            "frame": {"parquet": b64(parquet.getvalue())},
            "raw": {"bytes": b64(b"\x00\x01")},
            "buf": {"bytes": b64(b"\x02"), "bytearray": True},
            "inf": {"float": "-inf"},
            "doc": {"json": {"a": [1, None]}},
            "bad": {"bytes": "!!not base64!!"},
            "weird": {"float": "__import__('os')"},
        },
    )
    names = ["arr", "i8", "frame", "raw", "buf", "inf", "doc", "bad", "weird"]
    values, problems = load_pulled(folder, names)
    assert values["arr"].dtype == np.float16 and values["arr"].tolist() == [[1, 0], [0, 1]]
    assert isinstance(values["i8"], np.int8) and values["i8"] == 7
    pd.testing.assert_frame_equal(values["frame"], frame)
    assert values["raw"] == b"\x00\x01" and values["buf"] == bytearray(b"\x02")
    assert values["inf"] == float("-inf") and values["doc"] == {"a": [1, None]}
    assert set(problems) == {"bad", "weird"}


def test_parquet_needs_a_safe_pyarrow_in_this_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_variables(tmp_path, {"frame": {"parquet": b64(b"PAR1")}})
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    assert "install pyarrow in this kernel" in load_pulled(folder, ["frame"])[1]["frame"]
    monkeypatch.undo()
    import pyarrow

    monkeypatch.setattr(pyarrow, "__version__", "13.0.0")  # before the fix for CVE-2023-47248
    assert "too old to read it safely" in load_pulled(folder, ["frame"])[1]["frame"]


def test_untrusted_display_data_is_made_safe() -> None:
    html = (
        '<b>kept</b><img src="x" onerror="steal()"><script>steal()</script><iframe src="https://x"></iframe>'
    )
    data, _ = untrusted_bundle({"text/html": [html[:20], html[20:]], "text/plain": "t"}, {}) or ({}, {})
    assert "<b>kept</b>" in data["text/html"]
    assert not any(bad in data["text/html"] for bad in ("onerror", "script", "iframe", "steal"))
    data, _ = untrusted_bundle({"application/javascript": "steal()", "text/plain": "<Javascript>"}, {}) or (
        {},
        {},
    )
    assert "application/javascript" not in data and "not shown: application/javascript" in data["text/plain"]
    data, _ = untrusted_bundle(
        {"text/markdown": "[x](javascript:steal()) <img src=x onerror=steal()> **b**"}, {}
    ) or ({}, {})
    assert "javascript:" not in data["text/markdown"] and "onerror" not in data["text/markdown"]
    assert "**b**" in data["text/markdown"]
    assert untrusted_bundle({"application/vnd.bokehjs_exec.v0+json": {}}, {}) is not None
    svg = {"image/svg+xml": "<svg/>", "image/png": "iVBOR"}
    assert untrusted_bundle(svg, {"image/png": {"width": 2}}) == (svg, {"image/png": {"width": 2}})
    assert untrusted_bundle({}, {}) is None
    trusted = {"application/javascript": "run()", "text/html": "<script>run()</script>"}
    assert display_bundle(trusted, {}, trusted=True) == (trusted, {})
