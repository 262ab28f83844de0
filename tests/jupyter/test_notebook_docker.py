"""A notebook with %%hivemind cells, executed end to end by a real kernel (nbclient) against the
pool and a Docker worker; the saved outputs are checked."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

pytestmark = [pytest.mark.slow, pytest.mark.docker]


def notebook(*sources: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def outputs_of(cell: nbformat.NotebookNode, kind: str) -> list[dict]:
    return [o for o in cell.outputs if o.output_type == kind]


def test_notebook_runs_cells_on_a_docker_worker(signed_in, docker_worker, tmp_path: Path):
    nb = notebook(
        "%load_ext hivemind_jupyter\nscale = 3",
        "%%hivemind --push scale --pull total --memory 512M --name in-docker\n"
        "import getpass, socket\n"
        "from IPython.display import HTML, display\n"
        "print('running as', getpass.getuser())\n"
        "display(HTML('<i>made in a container</i>'))\n"
        "total = sum(range(10)) * scale\n"
        "total",
        "print('total is', total)",
        "%%hivemind --memory 512M\nraise ValueError('remote failure')",
        "print('never runs')",
    )
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    with pytest.raises(CellExecutionError) as caught:
        client.execute()
    assert "remote failure" in str(caught.value)
    remote = nb.cells[1]
    text = "".join(o.get("text", "") for o in outputs_of(remote, "stream") if o.name == "stdout")
    assert "running as" in text and "root" not in text  # the container's non-root user
    html = [o.data["text/html"] for o in outputs_of(remote, "display_data") if "text/html" in o.data]
    assert any("made in a container" in h for h in html)
    assert any(o.data.get("text/plain") == "135" for o in outputs_of(remote, "display_data"))
    assert any("SUCCEEDED" in o.data.get("text/plain", "")
               for o in remote.outputs if o.output_type in ("display_data", "update_display_data"))
    assert "total is 135" in "".join(o.get("text", "") for o in outputs_of(nb.cells[2], "stream"))
    failed = nb.cells[3]
    errors = outputs_of(failed, "error")
    assert errors and "ValueError" in "\n".join(errors[0].traceback)
    assert nb.cells[4].outputs == []  # Run All stopped at the failing cell
    results = list((tmp_path / "hivemind-results").glob("in-docker-*"))
    assert len(results) == 1 and (results[0] / "main.ipynb").is_file()
    nbformat.write(nb, tmp_path / "executed.ipynb")  # what a user would save
    saved = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    nbformat.validate(saved)
