"""The executed notebook's name, made from its task's name: readable, unique, safe on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivemind_nodepool.protocol.result_notebook import name_result_notebook, result_notebook_name


@pytest.mark.parametrize(
    ("task_name", "expected"),
    [
        ("analysis.ipynb [4]", "analysis [4] - t-1.ipynb"),
        ("hello.ipynb", "hello - t-1.ipynb"),
        ("nightly run", "nightly run - t-1.ipynb"),
        ('a/b\\c:d*e?"f<g>h|i', "a-b-c-d-e-f-g-h-i - t-1.ipynb"),
        ("line\nbreak\tand   blanks", "line-break-and blanks - t-1.ipynb"),
        ("..hidden", "hidden - t-1.ipynb"),
        ("", "task - t-1.ipynb"),
        ("///", "task - t-1.ipynb"),
    ],
)
def test_result_notebook_name(task_name: str, expected: str) -> None:
    assert result_notebook_name(task_name, "t-1") == expected


def test_a_long_name_is_cut_to_fit_one_file_name() -> None:
    name = result_notebook_name("é" * 500, "t-0123456789ab")
    assert name.endswith(" - t-0123456789ab.ipynb") and len(name.encode()) < 255
    assert len(result_notebook_name("x" * 500, "t-1")) < 100


def test_renames_in_place_and_never_over_another_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "main.ipynb").write_text("executed")
    assert name_result_notebook(tmp_path, "sub/main.ipynb", "job", "t-1") == "sub/job - t-1.ipynb"
    assert (tmp_path / "sub" / "job - t-1.ipynb").read_text() == "executed"
    (tmp_path / "main.ipynb").write_text("executed")
    (tmp_path / "job - t-1.ipynb").write_text("the task's own file")
    assert name_result_notebook(tmp_path, "main.ipynb", "job", "t-1") == "main.ipynb"
    assert (tmp_path / "job - t-1.ipynb").read_text() == "the task's own file"
    assert name_result_notebook(tmp_path, "missing.ipynb", "job", "t-1") is None
    assert name_result_notebook(tmp_path, "", "job", "t-1") is None
