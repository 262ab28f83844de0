"""The magics where no working pool is needed: option checking, a pool that is down, no sign-in."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from hivemind_jupyter.config import HiveMind
from hivemind_jupyter.errors import PoolProblem
from hivemind_jupyter.magics import CellOptions
from hivemind_nodepool.client import credentials


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--cpus", "expected one argument"),
        ("--cpus many", "invalid float"),
        ("--cpus 0", "more than 0"),
        ("--cpus -2", "more than 0"),
        ("--gpus -1", "negative"),
        ("--gpus 1.5", "invalid int"),
        ("--memory lots", "not a size"),
        ("--memory 0", "more than 0"),
        ("--disk lots", "not a size"),
        ("--disk 0", "more than 0"),
        ("--timeout soon", "not a duration"),
        ("--retries -3", "negative"),
        ("--labels novalue", "KEY=VALUE"),
        ("-p 1x=3", "NAME=VALUE"),
        ("-p novalue", "NAME=VALUE"),
        ("-p class=3", "not a valid"),
        ("--push undefined_var", "no variable undefined_var"),
        ("--push 'not a name'", "not a valid"),
        ("--pull 1abc", "not a valid"),
        ("--pull _hm_secret", "reserved"),
        ("--dir /no/such/folder", "not a folder"),
        ("--requirements /no/such/file.txt", "not a file"),
        ("--bogus", "unrecognized arguments"),
        ("extra words", "unrecognized arguments"),
        ("--name 'unbalanced", "cannot split"),
    ],
)
def test_bad_options_are_usage_errors(line, message):
    with pytest.raises(UsageError) as caught:
        CellOptions(line, HiveMind(), {})
    assert message in str(caught.value)


def test_good_options_are_parsed(tmp_path: Path):
    (tmp_path / "requirements.txt").write_text("numpy\n")
    options = CellOptions(
        f"--cpus 2.5 --memory 1G --gpus 1 --disk 20G --labels site=lab2,gpu=a100 --labels os=linux -p lr=0.1 "
        f"-p name=resnet -p flags=[1,2] -p flag=True --push a,b --pull c --pull d,c --timeout 1h30m "
        f"--retries 2 --name train --no-wait --dir {tmp_path} --requirements {tmp_path}/requirements.txt",
        HiveMind(),
        {"a": 1, "b": [2]},
    )
    request = options.request
    assert (request.cpus, request.memory, request.gpus) == (2.5, 1024**3, 1)
    assert request.to_manifest("main.ipynb").resources.disk_bytes == 20 * 1024**3
    assert request.labels == {"site": "lab2", "gpu": "a100", "os": "linux"}
    assert request.parameters == {"lr": 0.1, "name": "resnet", "flags": [1, 2], "flag": True}
    assert options.push_values == {"a": 1, "b": [2]}
    assert options.pull == ["c", "d"] and request.pull_variables == ("c", "d")
    assert request.timeout == 5400 and request.max_retries == 2 and request.name == "train"
    assert options.no_wait and options.folder == tmp_path


def test_defaults_come_from_the_settings():
    settings = HiveMind(default_cpus=3, default_memory="3G", default_gpus=1)
    request = CellOptions("", settings, {}).request
    assert (request.cpus, request.memory, request.gpus) == (3, 3 * 1024**3, 1)


@pytest.mark.parametrize(
    "cell",
    [
        "%%hivemind --help",
        "%%hivemind --help\n",
        "%%hivemind -h\n\n  \n",
        "%%hivemind --cpus 1 --help\nprint('the body ran')\n",
    ],
)
def test_cell_help_prints_once_with_or_without_a_body(shell, cell):
    with capture_output() as captured:
        result = shell.run_cell(cell)
    assert result.success, (captured.stdout, captured.stderr)
    assert captured.stdout.count("usage: %%hivemind") == 1, captured.stdout
    assert "--no-wait" in captured.stdout and "--cpus" in captured.stdout
    assert "the body ran" not in captured.stdout
    assert captured.stderr == ""  # no "cell body is empty", no UsageError repeating the help


def test_an_empty_cell_without_help_is_still_refused(shell):
    with capture_output() as captured:
        result = shell.run_cell("%%hivemind --cpus 1\n")
    assert isinstance(result.error_in_exec, UsageError) and "body is empty" in captured.stderr


def test_not_signed_in_is_one_clear_line(shell):
    with capture_output() as captured:
        result = shell.run_cell("%%hivemind\nprint(1)\n")
    assert isinstance(result.error_in_exec, PoolProblem)
    assert "not signed in" in captured.stdout
    assert "Traceback" not in captured.stdout and "grpc" not in captured.stdout.lower()
    assert len(captured.stdout.strip().splitlines()) == 1


def test_pool_down_is_one_clear_line(shell, hivemind_config_dir: Path):
    address = f"127.0.0.1:{free_port()}"
    credentials.save(
        credentials.Credential(pool=address, user="ada", token="t" * 40, expires_at=0), hivemind_config_dir
    )
    for code in ("%%hivemind\nprint(1)\n", "%hivemind status", "%hivemind tasks", "%hivemind logs t-1"):
        with capture_output() as captured:
            result = shell.run_cell(code)
        assert isinstance(result.error_in_exec, PoolProblem), code
        lines = captured.stdout.strip().splitlines()
        assert len(lines) == 1 and "cannot reach the HiveMind pool" in lines[0] and address in lines[0]


@pytest.mark.parametrize(
    "line",
    ["frobnicate", "logs", "cancel a b", "attach", "tasks --state NOPE", "tasks --limit 0", "login --bogus"],
)
def test_bad_line_commands_are_usage_errors(shell, line, hivemind_config_dir: Path):
    credentials.save(
        credentials.Credential(pool=f"127.0.0.1:{free_port()}", user="ada", token="t", expires_at=0),
        hivemind_config_dir,
    )
    with capture_output():
        result = shell.run_cell(f"%hivemind {line}")
    assert isinstance(result.error_in_exec, UsageError), line


def test_line_help_says_what_works(shell):
    with capture_output() as captured:
        shell.run_line_magic("hivemind", "help")
    assert "attach ID" in captured.stdout
    assert "%%hivemind --help" in captured.stdout and "--memory 1G" in captured.stdout


def test_interrupt_action_is_configurable(shell):
    shell.run_line_magic("config", "HiveMind.interrupt_action = 'detach'")
    magics = shell.magics_manager.registry["HiveMindMagics"]
    assert magics.settings.interrupt_action == "detach"
    with capture_output():
        shell.run_cell("%config HiveMind.interrupt_action = 'explode'")
    assert magics.settings.interrupt_action == "detach"


def test_bad_settings_do_not_stop_the_magics_loading(shell):
    shell.config.HiveMind.interrupt_action = "explode"
    with capture_output() as captured:
        shell.run_line_magic("reload_ext", "hivemind_jupyter")
    assert "ignoring the HiveMind settings" in captured.stderr
    assert shell.magics_manager.registry["HiveMindMagics"].settings.interrupt_action == "cancel"


def test_the_panels_requirements_replace_the_folders(tmp_path: Path):
    import zipfile

    from hivemind_jupyter.packaging import cell_task_name, pack_path
    from hivemind_nodepool.client.submission import TaskRequest

    (tmp_path / "nb.ipynb").write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    (tmp_path / "requirements.txt").write_text("old-package\n")
    work = tmp_path / "work"
    work.mkdir()
    _, packed = pack_path(tmp_path / "nb.ipynb", TaskRequest(), work, requirements="pandas\nnumpy  \n")
    with zipfile.ZipFile(packed.path) as bundle:
        assert bundle.read("requirements.txt") == b"pandas\nnumpy\n"
        assert bundle.namelist().count("requirements.txt") == 1
    assert cell_task_name("/home/ada/analysis.ipynb", 4) == "analysis.ipynb [4]"
    assert cell_task_name(None, 3) == "[3]"
    assert cell_task_name(None, None) == "cell"


DEMO_WORKER = {"cpus": 2.0, "memory": 4 * 1024**3, "gpus": 0}  # `hivemind up` on a small machine


def _doc_examples() -> list[tuple[str, str]]:
    """(file, options) of every `%%hivemind` and `hivemind submit` line in the docs' code blocks."""
    root = Path(__file__).resolve().parents[2]
    found = []
    for name in ("README.md", "docs/user-guide.md"):
        inside = False
        for line in (root / name).read_text().splitlines():
            if line.strip().startswith("```"):
                inside = not inside
            elif inside and re.match(r"%%hivemind(\s+-|\s*$)", line.strip()):  # not the diagram
                found.append((name, line.strip().removeprefix("%%hivemind")))
            elif inside and line.strip().startswith("hivemind submit "):
                found.append((name, " ".join(w for w in line.split()[3:] if w != "--wait")))
    return found


@pytest.mark.parametrize(("doc", "options"), _doc_examples())
def test_the_docs_examples_fit_the_demo_worker(doc: str, options: str) -> None:
    """Every example a new user copies runs on `hivemind up`'s worker, never waits for ever."""
    request = CellOptions(options, HiveMind(), {}).request
    assert request.cpus <= DEMO_WORKER["cpus"], (doc, options)
    assert request.memory <= DEMO_WORKER["memory"], (doc, options)
    assert request.gpus <= DEMO_WORKER["gpus"], (doc, options)


def test_the_docs_have_examples() -> None:
    assert len(_doc_examples()) >= 3


def test_wait_for_fit_is_an_option_and_a_setting() -> None:
    assert not CellOptions("", HiveMind(), {}).wait_for_fit
    assert CellOptions("--wait-for-fit", HiveMind(), {}).wait_for_fit
    assert CellOptions("", HiveMind(wait_for_fit=True), {}).wait_for_fit


def _requirements(tmp_path: Path, text: str) -> str:
    path = tmp_path / "requirements.txt"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--env conda", "--env must be auto, none, freeze, requirements or image, not 'conda'"),
        ("--env requirements", "--env requirements needs the file: --requirements FILE"),
        ("--env image", "--env image needs the image's name: --image NAME"),
        ("--env none --requirements {reqs}", "--env none and --requirements contradict each other"),
        ("--image 'Not An Image'", "is not an image name"),
        ("--image lab/x --requirements {reqs}", "not both"),
        ("--python 2.7.x", "--python: '2.7.x' is not a Python version"),
        ("--python three", "is not a Python version"),
    ],
)
def test_bad_environment_options_are_usage_errors(tmp_path: Path, line: str, message: str):
    reqs = _requirements(tmp_path, "numpy==2.1.0\n")
    with pytest.raises(UsageError) as caught:
        CellOptions(line.format(reqs=reqs), HiveMind(), {})
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-e ./mine\n", "-e is not allowed"),
        ("numpy\n-r other.txt\n", "requirements line 2: -r is not allowed"),
        ("--index-url https://mirror.example/simple\n", "--index-url is not allowed"),
        ("numpy==2.1.0 --hash=sha256:0123abc\n", "the sha256 hash is 7 hex digits long"),
        ("".join(f"package{i}==1.0\n" for i in range(5000)), "more than 2000 packages"),
        ("../outside/pkg\n", "is a path or URL"),
        ("evil/pkg==1.0\n", "is a path or URL"),
        ("numpy\nnumpy==2.0\n", "numpy is already required on line 1"),
    ],
)
def test_a_bad_requirements_file_is_refused_before_upload(tmp_path: Path, text: str, message: str):
    with pytest.raises(UsageError) as caught:
        CellOptions(f"--requirements {_requirements(tmp_path, text)}", HiveMind(), {})
    assert message in str(caught.value)


def test_environment_options_are_parsed(tmp_path: Path):
    assert CellOptions("", HiveMind(), {}).environment.mode == "auto"
    assert CellOptions("--env freeze --python 3.12", HiveMind(), {}).environment.python == "3.12"
    assert CellOptions("--env none", HiveMind(), {}).environment.mode == "none"
    image = CellOptions("--image lab/analysis:2024", HiveMind(), {}).environment
    assert (image.mode, image.image) == ("image", "lab/analysis:2024")
    reqs = _requirements(tmp_path, "numpy==2.1.0\n")
    chosen = CellOptions(f"--requirements {reqs}", HiveMind(), {})
    assert chosen.environment.mode == "requirements" and chosen.environment.requirements == b"numpy==2.1.0\n"


def test_a_cells_bundle_carries_its_environment(tmp_path: Path):
    import zipfile

    from hivemind_jupyter.packaging import pack_cell
    from hivemind_nodepool.client.environment import EnvironmentChoice
    from hivemind_nodepool.client.submission import TaskRequest

    numpy = pytest.importorskip("numpy")
    code = "import numpy as np\nimport torch\n"
    manifest, packed = pack_cell(code, TaskRequest(), tmp_path / "b.zip", environment=EnvironmentChoice())
    with zipfile.ZipFile(packed.path) as bundle:
        assert f"numpy=={numpy.__version__}" in bundle.read(".hivemind/environment.lock").decode()
    assert manifest.environment.mode == "auto" and manifest.environment.summary.startswith("numpy ")
    assert packed.notices[0] == f"environment: {manifest.environment.summary}"
    assert "this cell imports torch but asks for no GPU: add --gpus 1 to run it on a GPU" in packed.notices
