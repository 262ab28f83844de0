"""A cell runs on the pool with its kernel's packages, at their versions, with no option: the magic
captures what the cell imports, a real Docker worker builds it with uv from a wheelhouse the test
makes itself (--offline: no package index), and the next identical cell builds nothing.

The kernel's packages are fake distributions on sys.path (tests/harness/fake_site.py) at versions
the wheelhouse also has, beside a newer hmdemo_alpha 1.1: an unpinned install would take 1.1."""

from __future__ import annotations

import importlib
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
