"""A cell runs on the pool with its kernel's packages, at their versions, with no option: the magic
captures what the cell imports, a real Docker worker builds it with uv from a wheelhouse the test
makes itself (--offline: no package index), and the next identical cell builds nothing.

The kernel's packages are fake distributions on sys.path (tests/harness/fake_site.py) at versions
the wheelhouse also has, beside a newer hmdemo_alpha 1.1: an unpinned install would take 1.1."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
from harness.env_worker import EnvWorker
from harness.fake_site import add_distribution, local_project
from IPython.utils.capture import capture_output

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CELL = (
    "%%hivemind --memory 512M\n"
    "import hmdemo_beta\nimport hmdemo_alpha\n"
    "print('remote versions', hmdemo_alpha.__version__, hmdemo_beta.__version__)\n"
)


@pytest.fixture
def kernel_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """hmdemo-alpha 1.0 and hmdemo-beta 2.0 (which needs alpha) installed in this kernel."""
    site = tmp_path / "kernel-site"
    add_distribution(site, "hmdemo-alpha", "1.0", modules=["hmdemo_alpha"])
    add_distribution(site, "hmdemo-beta", "2.0", modules=["hmdemo_beta"], requires=["hmdemo_alpha>=1.0"])
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    return site


def run(shell, code: str) -> str:
    with capture_output() as captured:
        result = shell.run_cell(code)
    shown = captured.stdout + captured.stderr
    assert result.error_in_exec is None, shown
    return shown


def test_a_cell_runs_with_its_kernels_packages_and_the_next_one_builds_nothing(
    signed_in, env_worker: EnvWorker, kernel_packages: Path, shell
) -> None:
    first = run(shell, CELL)
    assert "remote versions 1.0 2.0" in first, first  # the kernel's versions, not the newest
    assert "environment: hmdemo-beta 2.0, hmdemo-alpha 1.0" in first or (
        "environment: hmdemo-alpha 1.0, hmdemo-beta 2.0" in first
    ), first
    assert "new environment built on env-worker" in first, first
    built = [row for row in env_worker.environments() if not row["failed"]]
    assert len(built) == 1, built

    second = run(shell, CELL)
    assert "remote versions 1.0 2.0" in second, second
    assert "environment cached on env-worker" in second, second
    assert len([row for row in env_worker.environments() if not row["failed"]]) == 1


def test_an_editable_package_of_the_user_is_shipped_and_imported(
    signed_in, env_worker: EnvWorker, shell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = local_project(tmp_path / "src", "hm-mine", "0.4.0", "hm_mine", "ANSWER = 42\n")
    site = tmp_path / "editable-site"
    add_distribution(
        site, "hm-mine", "0.4.0", direct_url={"url": project.as_uri(), "dir_info": {"editable": True}}
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(project / "src"))
    importlib.invalidate_caches()
    shown = run(shell, "%%hivemind --memory 512M\nimport hm_mine\nprint('remote answer', hm_mine.ANSWER)\n")
    assert "remote answer 42" in shown, shown
    assert "hm-mine 0.4.0 (built here)" in shown, shown


def test_env_none_runs_on_the_bare_runtime(
    signed_in, env_worker: EnvWorker, kernel_packages: Path, shell
) -> None:
    with capture_output() as captured:
        result = shell.run_cell("%%hivemind --memory 512M --env none\nimport hmdemo_alpha\n")
    shown = captured.stdout + captured.stderr
    assert result.error_in_exec is not None and "ModuleNotFoundError" in shown, shown
    assert "hmdemo-alpha==1.0" in shown and "--env auto" in shown, shown  # the hint says what to do
    assert env_worker.environments() == []


FROZEN_CELL = (
    "%%hivemind --memory 512M --env freeze\n"
    "import importlib\n"  # by name only: no import statement that --env auto would see
    "found = [importlib.import_module(name) for name in ('hmdemo_alpha', 'hmdemo_beta', 'hmdemo_delta')]\n"
    "print('frozen versions', *(module.__version__ for module in found))\n"
)


def frozen_site(root: Path) -> Path:
    """A site with only what the wheelhouse has: hmdemo-alpha 1.0 (1.1 is newer there), hmdemo-beta
    2.0, hmdemo-delta 1.0, plus pip and papermill, which freeze leaves out (an installer, and the
    runtime's own). Freezing the test venv itself would pin pytest and the rest, which no offline
    wheelhouse here has."""
    site = root / "frozen-site"
    add_distribution(site, "hmdemo-alpha", "1.0", modules=["hmdemo_alpha"])
    add_distribution(site, "hmdemo-beta", "2.0", modules=["hmdemo_beta"], requires=["hmdemo_alpha>=1.0"])
    add_distribution(site, "hmdemo-delta", "1.0", modules=["hmdemo_delta"])
    add_distribution(site, "pip", "0.0.1", modules=["hmdemo_fake_pip"])
    add_distribution(site, "papermill", "0.0.1", modules=["hmdemo_fake_papermill"])
    return site


def kernel_path(site: Path) -> list[str]:
    """The kernel's sys.path with no site-packages but `site`: the standard library, the site, and
    the project's source folders (no distribution metadata in them)."""
    standard = [entry for entry in sys.path if entry.startswith(sys.base_prefix) and "-packages" not in entry]
    sources = [
        entry
        for entry in sys.path
        if entry and entry not in standard and "-packages" not in entry
        if not list(Path(entry).glob("*.dist-info"))
    ]
    return [*standard, str(site), *sources]


def test_env_freeze_pins_every_distribution_of_the_kernel(
    signed_in, env_worker: EnvWorker, shell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(shell, "%%hivemind --memory 512M --env none\nprint('warm')\n")  # the magic's own imports, first
    with monkeypatch.context() as patched:  # only for the frozen cell: later imports need the venv
        patched.setattr(sys, "path", kernel_path(frozen_site(tmp_path)))
        importlib.invalidate_caches()
        shown = run(shell, FROZEN_CELL)
    importlib.invalidate_caches()
    assert "frozen versions 1.0 2.0 1.0" in shown, shown  # the kernel's alpha, not the newer 1.1
    assert "environment: 3 packages of the kernel (freeze)" in shown, shown
    built = [row for row in env_worker.environments() if not row["failed"]]
    assert len(built) == 1 and built[0]["packages"] == 3, built
    assert sorted(built[0]["pins"]) == ["hmdemo-alpha==1.0", "hmdemo-beta==2.0", "hmdemo-delta==1.0"], built
