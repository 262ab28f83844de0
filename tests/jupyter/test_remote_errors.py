"""A failed remote cell, as the user sees it in a real IPython shell against a real pool and worker:
its traceback numbered as their own cell, and a hint for the common remote errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from IPython.utils.capture import capture_output

from hivemind_jupyter.errors import RemoteTaskError
from hivemind_jupyter.tracebacks import to_local_cell

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run(shell, code: str) -> tuple[object, str]:
    """Run a cell as a kernel does (counted in the history); what it showed, without colours."""
    with capture_output() as captured:
        result = shell.run_cell(code, store_history=True)
    return result, ANSI.sub("", captured.stdout + captured.stderr)


def test_plain_tracebacks_are_renumbered_frame_by_frame() -> None:
    text = (
        "Cell In[3], line 9\n      8 x = 1\n----> 9 y()\n\n"
        "File /usr/lib/python3/json/__init__.py:346, in loads(s)\n    345 if x:\n--> 346     return 1\n\n"
        "Cell In[3], line 2, in y()\n      1 def y():\n----> 2     return 1/0\n\n"
        "ZeroDivisionError: division by zero"
    )
    mapped = to_local_cell([text], remote_count=3, local_count=12)[0].splitlines()
    assert mapped[:3] == ["Cell In[12], line 10", "      9 x = 1", "----> 10 y()"]
    assert "    345 if x:" in mapped and "--> 346     return 1" in mapped  # another file: as it was
    assert "Cell In[12], line 3, in y()" in mapped and "----> 3     return 1/0" in mapped
    assert to_local_cell([text], None, 12) == [text]


@pytest.mark.slow
def test_a_remote_traceback_is_numbered_as_the_users_cell(signed_in, local_worker, shell) -> None:
    run(shell, "a = 1")
    count = shell.execution_count  # the number the next cell runs as, [count] in JupyterLab
    # -p makes papermill add a cell on the pool, so the remote count differs from the local one.
    result, shown = run(
        shell,
        "%%hivemind --memory 512M -p n=1\nprint('before')\ndef boom():\n    return 1 / 0\n\nboom()\n",
    )
    assert isinstance(result.error_in_exec, RemoteTaskError)
    # boom() is line 5 of the code, line 6 of the cell (the magic line is line 1).
    assert f"Cell In[{count}], line 6" in shown, shown
    assert f"Cell In[{count}], line 4, in boom" in shown, shown
    assert "----> 6 boom()" in shown and "----> 4     return 1 / 0" in shown, shown
    assert "      2 print('before')" in shown, shown
    assert set(re.findall(r"Cell In\[(\d+)\]", shown)) == {str(count)}, shown


@pytest.mark.slow
def test_a_name_defined_locally_says_push_it(signed_in, local_worker, shell, tmp_path: Path) -> None:
    shell.user_ns["frame"] = {"rows": 3}
    shell.run_cell("import json as js")
    result, shown = run(shell, "%%hivemind --memory 512M\nprint(frame)\n")
    assert isinstance(result.error_in_exec, RemoteTaskError) and "NameError" in shown
    assert "`frame` is defined locally: add `--push frame`" in shown, shown
    result, shown = run(shell, "%%hivemind --memory 512M\nprint(js.dumps(1))\n")
    assert "`js` is imported here, not in the cell: add `import json as js`" in shown, shown
    # A name nobody defined gets no hint.
    result, shown = run(shell, "%%hivemind --memory 512M\nprint(nowhere_at_all)\n")
    assert "NameError" in shown and "hint" not in shown, shown


@pytest.mark.slow
def test_a_local_module_file_says_send_its_folder(signed_in, local_worker, shell, monkeypatch) -> None:
    Path("helpers_here.py").write_text("VALUE = 3\n")  # the shell works in a fresh folder
    monkeypatch.syspath_prepend(str(Path.cwd()))  # as in a kernel: the notebook's folder is importable
    result, shown = run(shell, "%%hivemind --memory 512M\nimport helpers_here\n")
    assert isinstance(result.error_in_exec, RemoteTaskError) and "ModuleNotFoundError" in shown
    assert "`helpers_here` is a module in this folder here: send it with the cell, `--dir .`" in shown, shown
    result, shown = run(
        shell, "%%hivemind --memory 512M --dir .\nimport helpers_here\nprint(helpers_here.VALUE)\n"
    )
    assert result.error_in_exec is None and "3" in shown, shown


@pytest.mark.slow
@pytest.mark.docker
def test_a_module_installed_locally_says_how_to_get_it(signed_in, docker_worker, shell) -> None:
    from importlib.metadata import version

    # bcrypt is installed here (the pool needs it) but not in the runtime image.
    # --env none: the bare runtime, as a task whose environment leaves a package out.
    result, shown = run(shell, "%%hivemind --memory 512M --env none\nimport bcrypt\n")
    assert isinstance(result.error_in_exec, RemoteTaskError) and "ModuleNotFoundError" in shown, shown
    assert f"is installed here (bcrypt=={version('bcrypt')})" in shown, shown
    assert "`--env auto` (the default)" in shown and "--requirements FILE" in shown
