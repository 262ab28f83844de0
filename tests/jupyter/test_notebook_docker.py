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
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    with pytest.raises(CellExecutionError) as caught:
        client.execute()
    assert "remote failure" in str(caught.value)
    remote = nb.cells[1]
    text = "".join(o.get("text", "") for o in outputs_of(remote, "stream") if o.name == "stdout")
    assert "running as" in text and "root" not in text  # the container's non-root user
    html = [o.data["text/html"] for o in outputs_of(remote, "display_data") if "text/html" in o.data]
    assert any("made in a container" in h for h in html)
    assert any(o.data.get("text/plain") == "135" for o in outputs_of(remote, "display_data"))
    assert any(
        "SUCCEEDED" in o.data.get("text/plain", "")
        for o in remote.outputs
        if o.output_type in ("display_data", "update_display_data")
    )
    assert "total is 135" in "".join(o.get("text", "") for o in outputs_of(nb.cells[2], "stream"))
    failed = nb.cells[3]
    errors = outputs_of(failed, "error")
    assert errors and "ValueError" in "\n".join(errors[0].traceback)
    assert nb.cells[4].outputs == []  # Run All stopped at the failing cell
    # a cell that succeeded and wrote no output files leaves nothing beside the notebook; the
    # failed one keeps its executed notebook, named after its task
    (kept,) = (tmp_path / "hivemind-results").iterdir()
    assert not kept.name.startswith("in-docker-")
    (executed,) = kept.glob("*.ipynb")
    assert executed.name.endswith(f" - t-{kept.name.rsplit('-t-', 1)[1]}.ipynb")
    assert "remote failure" in executed.read_text()
    nbformat.write(nb, tmp_path / "executed.ipynb")  # what a user would save
    saved = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    nbformat.validate(saved)


NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def run_example(name: str, tmp_path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    return nb


def all_text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_quickstart_runs_on_a_docker_worker(signed_in, docker_worker, tmp_path: Path):
    nb = run_example("quickstart.ipynb", tmp_path)
    remote = nb.cells[4]
    assert any("image/svg+xml" in o.get("data", {}) for o in remote.outputs)
    assert "samples: pi is about" in all_text(nb)
    assert "back in this kernel: estimate = 3.1" in all_text(nb)
    assert "SUCCEEDED [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in all_text(nb)


def test_gpu_request_waits_with_a_reason_on_a_pool_without_gpus(signed_in, local_worker, tmp_path: Path):
    nb = run_example("gpu-request.ipynb", tmp_path)
    text = all_text(nb)
    assert "QUEUED - " in text and "gpu" in text.lower()


EXAMPLES = sorted(p.relative_to(NOTEBOOKS).as_posix() for p in NOTEBOOKS.rglob("*.ipynb"))


@pytest.mark.parametrize("path", EXAMPLES)
def test_examples_are_valid_notebooks(path: str):
    nbformat.validate(nbformat.read(NOTEBOOKS / path, as_version=4))
