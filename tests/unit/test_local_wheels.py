"""Editable and local-folder installs travel as wheels built here: a real build (pip or uv, no
index) of a tiny pyproject project, shipped in the bundle and pinned in the lock."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from harness.fake_site import add_distribution, local_project

from hivemind_jupyter.packaging import pack_cell
from hivemind_nodepool.client.environment import EnvironmentChoice, Sources, capture
from hivemind_nodepool.client.submission import TaskRequest
from hivemind_nodepool.protocol.bundle import MANIFEST_NAME
from hivemind_nodepool.protocol.environment import LOCK_PATH, WHEELS_DIR, check_requirements
from hivemind_nodepool.protocol.errors import InvalidInput

WHEEL = f"{WHEELS_DIR}/hm_local-0.3.0-py3-none-any.whl"


@pytest.fixture
def editable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """hm-local 0.3.0 installed editable from a project folder: a dist-info with a PEP 610
    direct_url.json and no top_level.txt (as hatchling and others leave it), its src on sys.path."""
    project = local_project(tmp_path / "work", "hm-local", "0.3.0", "hm_local")
    site = tmp_path / "site-packages"
    add_distribution(
        site,
        "hm-local",
        "0.3.0",
        direct_url={"url": project.as_uri(), "dir_info": {"editable": True}},
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(project / "src"))
    return project


def test_an_editable_install_is_built_into_a_wheel_in_the_bundle(editable: Path, tmp_path: Path) -> None:
    manifest, packed = pack_cell(
        "import hm_local\nprint(hm_local.VERSION)\n",
        TaskRequest(),
        tmp_path / "bundle.zip",
        environment=EnvironmentChoice(),
    )
    with zipfile.ZipFile(packed.path) as bundle:
        lock = bundle.read(LOCK_PATH).decode()
        assert WHEEL in bundle.namelist()
        with zipfile.ZipFile(bundle.open(WHEEL)) as wheel:  # a real wheel with the package's code
            assert wheel.read("hm_local/__init__.py") == b"VERSION = '0.3.0'\n"
        shipped = json.loads(bundle.read(MANIFEST_NAME))
    assert "hm-local==0.3.0" in lock.splitlines()
    assert f"# hm-local: {WHEEL} record-sha256=" in lock
    check_requirements(lock)
    assert manifest.environment.summary == "hm-local 0.3.0 (built here)"
    assert shipped["environment"]["summary"] == "hm-local 0.3.0 (built here)"
    assert shipped["environment"]["lock_sha256"] == manifest.environment.lock_sha256


def test_an_unchanged_project_is_not_built_again_and_a_changed_one_is(editable: Path) -> None:
    sources = Sources(code=["import hm_local"])
    first = capture(EnvironmentChoice(), sources)
    again = capture(EnvironmentChoice(), sources)
    assert again.environment.lock_sha256 == first.environment.lock_sha256
    assert again.entries[WHEEL] == first.entries[WHEEL]  # the very same file: no second build
    (editable / "src" / "hm_local" / "__init__.py").write_text("VERSION = 'changed'\n")
    changed = capture(EnvironmentChoice(), sources)
    assert changed.environment.lock_sha256 != first.environment.lock_sha256  # a new environment


def test_a_build_that_fails_names_the_package(editable: Path) -> None:
    pyproject = editable / "pyproject.toml"
    broken = pyproject.read_text().split("[tool.setuptools.packages.find]")[0]
    pyproject.write_text(broken + '[tool.setuptools]\npackages = ["no_such_package_dir"]\n')
    with pytest.raises(InvalidInput) as caught:
        capture(EnvironmentChoice(), Sources(code=["import hm_local"]))
    message = str(caught.value)
    assert message.startswith("building a wheel of hm-local 0.3.0 (editable install from ")
    assert "--env none" in message


def test_wheels_over_the_bundle_limit_are_refused(editable: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        capture(EnvironmentChoice(), Sources(code=["import hm_local"]), max_bytes=100)
    assert "over the bundle limit" in str(caught.value) and "hm_local-0.3.0" in str(caught.value)


def test_an_install_from_a_folder_that_is_gone_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site-packages"
    add_distribution(
        site,
        "hm-gone",
        "1.0",
        modules=["hm_gone"],
        direct_url={"url": (tmp_path / "deleted").as_uri(), "dir_info": {}},
    )
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(InvalidInput) as caught:
        capture(EnvironmentChoice(), Sources(code=["import hm_gone"]))
    assert "hm-gone 1.0 was installed from" in str(caught.value) and "no longer exists" in str(caught.value)
