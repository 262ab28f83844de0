"""Capturing a task's environment: which modules the code imports, which installed distributions
provide them, the closure of their requirements, each pinned as installed (a temporary
site-packages with small fake distributions on sys.path; no network)."""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path

import pytest
from harness.fake_site import add_distribution

from hivemind_nodepool.client import distributions
from hivemind_nodepool.client.environment import (
    CapturedEnvironment,
    EnvironmentChoice,
    Sources,
    capture,
)
from hivemind_nodepool.client.imports import (
    bundle_modules,
    modules_in_code,
    modules_in_files,
    modules_of_values,
)
from hivemind_nodepool.protocol.environment import LOCK_PATH, check_requirements
from hivemind_nodepool.protocol.errors import InvalidInput


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A site-packages first on sys.path, holding a small family of distributions:
    hm-alpha -> hm-beta -> hm-gamma[fast] -> hm-delta; hm-alpha also needs tornado (the runtime's)."""
    folder = tmp_path / "site-packages"
    folder.mkdir()
    add_distribution(folder, "hm-alpha", "1.2.0", modules=["hm_alpha"], requires=["hm-beta>=2", "tornado>=6"])
    add_distribution(
        folder,
        "hm-beta",
        "2.0.1",
        modules=["hm_beta"],
        requires=['hm-gamma[fast]; python_version >= "3"', 'hm-never; python_version < "3"'],
    )
    add_distribution(
        folder,
        "hm-gamma",
        "0.9",
        modules=["hm_gamma"],
        extras=["fast", "slow"],
        requires=['hm-delta; extra == "fast"', 'hm-epsilon; extra == "slow"'],
    )
    add_distribution(folder, "hm-delta", "4.0.0", modules=["hm_delta"])
    add_distribution(folder, "hm-epsilon", "1.0", modules=["hm_epsilon"])
    add_distribution(folder, "hm-never", "1.0", modules=["hm_never"])
    # modules inferred from RECORD when a distribution has no top_level.txt
    add_distribution(folder, "hm-records", "3.1", modules=["hm_records_mod"], top_level=False)
    monkeypatch.syspath_prepend(str(folder))
    return folder


def lock_of(captured: CapturedEnvironment) -> list[str]:
    return [line for line in captured.entries[LOCK_PATH].decode().splitlines() if not line.startswith("#")]


def cell(code: str, **kwargs: object) -> CapturedEnvironment:
    return capture(EnvironmentChoice(), Sources(code=[code]), **kwargs)  # type: ignore[arg-type]


# -- which modules the code imports ------------------------------------------------------------


def test_imports_are_read_from_the_code_magics_and_all() -> None:
    code = (
        "%matplotlib inline\n"
        "!pip list\n"
        "files = !ls\n"
        "import numpy as np, os.path\n"
        "from pandas.api import types\n"
        "from . import sibling\n"
        "from .mine import thing\n"
        "def later():\n"
        "    import scipy.stats\n"
        "    from sklearn import svm\n"
        "importlib.import_module('yaml')\n"
        "__import__('toml')\n"
        "%time import polars\n"
    )
    assert modules_in_code(code) == {"numpy", "os", "pandas", "scipy", "sklearn", "yaml", "toml"}
    assert modules_in_code("%%time\nimport requests\n") == {"requests"}
    assert modules_in_code("%%bash\nimport not_python\n") == set()
    # code that does not parse: its import lines still count
    assert modules_in_code("import attr\nthis is not python (\nfrom rich import print\n") == {"attr", "rich"}


def test_a_folders_files_and_pushed_objects_count(tmp_path: Path) -> None:
    pandas = pytest.importorskip("pandas")
    (tmp_path / "helper.py").write_text("import hm_alpha\nfrom helper2 import x\n")
    (tmp_path / "data.csv").write_text("import not_code\n")
    names = [("helper.py", tmp_path / "helper.py"), ("data.csv", tmp_path / "data.csv")]
    assert modules_in_files(names) == {"hm_alpha", "helper2"}
    assert bundle_modules(["helper.py", "pkg/__init__.py", "data.csv", "ext.cpython-311.so"]) == {
        "helper",
        "pkg",
        "ext",
    }
    assert modules_of_values([pandas.DataFrame(), [pandas.Series(dtype=float)], 3, "x"]) == {"pandas"}


# -- mapping to distributions and the closure --------------------------------------------------


def test_a_cell_gets_its_distributions_and_their_closure_pinned(site: Path) -> None:
    captured = cell("import hm_alpha\nimport json, os, sys\n")
    assert lock_of(captured) == ["hm-alpha==1.2.0", "hm-beta==2.0.1", "hm-delta==4.0.0", "hm-gamma==0.9"]
    env = captured.environment
    assert env.mode == "auto" and env.package_count == 4
    assert env.summary == "hm-alpha 1.2.0 + 3 dependencies"
    assert env.python_version == platform.python_version() and not env.require_python
    assert env.lock_sha256 == hashlib.sha256(captured.entries[LOCK_PATH]).hexdigest()
    assert captured.notices == ["environment: hm-alpha 1.2.0 + 3 dependencies"]
    check_requirements(captured.entries[LOCK_PATH])  # the worker's own check accepts it


def test_the_runtime_the_stdlib_and_the_bundles_own_modules_are_left_out(site: Path) -> None:
    captured = cell("import tornado, ipykernel, papermill, json, hm_delta\n")
    assert lock_of(captured) == ["hm-delta==4.0.0"]
    own = capture(EnvironmentChoice(), Sources(code=["import hm_delta"], names=["hm_delta/__init__.py"]))
    assert lock_of(own) == [] and own.environment.summary == "no packages beyond the runtime"
    assert own.notices == []  # nothing to say about a cell that needs only the runtime


def test_modules_found_only_in_record_map_too(site: Path) -> None:
    assert lock_of(cell("import hm_records_mod")) == ["hm-records==3.1"]


def test_a_module_no_distribution_provides_is_named_not_guessed(site: Path) -> None:
    captured = cell("import hm_alpha\nimport hm_nowhere_at_all\n")
    assert "hm-nowhere" not in captured.entries[LOCK_PATH].decode()
    assert any(n.startswith("no installed package provides hm_nowhere_at_all") for n in captured.notices)


def test_pushed_objects_bring_their_packages(site: Path) -> None:
    pandas = pytest.importorskip("pandas")
    captured = capture(EnvironmentChoice(), Sources(code=["print(df)"], values=[pandas.DataFrame()]))
    assert f"pandas=={pandas.__version__}" in lock_of(captured)


def test_broken_metadata_is_one_line_naming_it_and_the_cell_still_goes(site: Path) -> None:
    no_metadata = add_distribution(site, "hm-broken", "1.0", modules=["hm_broken"], metadata=False)
    bad_version = add_distribution(site, "hm-badver", "1.0", modules=["hm_badver"])
    (bad_version / "METADATA").write_text("Metadata-Version: 2.1\nName: hm-badver\nVersion: not.a version!\n")
    captured = cell("import hm_broken, hm_badver, hm_delta\n")
    assert lock_of(captured) == ["hm-delta==4.0.0"]
    broken = [n for n in captured.notices if "left out of the environment" in n and "reinstall" in n]
    assert len(broken) == 2, captured.notices
    assert any(str(no_metadata) in line and "no METADATA" in line for line in broken)
    assert any(str(bad_version) in line and "'not.a version!' is not a version" in line for line in broken)


def test_the_index_is_cached_until_a_distribution_comes(site: Path) -> None:
    first = distributions.installed()
    assert distributions.installed() is first
    add_distribution(site, "hm-newcomer", "0.1", modules=["hm_newcomer"])
    second = distributions.installed()
    assert second is not first and "hm-newcomer" in second.by_key
    assert lock_of(cell("import hm_newcomer")) == ["hm-newcomer==0.1"]


def test_freeze_pins_everything_but_the_runtime_and_the_installers(site: Path) -> None:
    captured = capture(EnvironmentChoice(mode="freeze"), Sources())
    lock = lock_of(captured)
    assert {"hm-alpha==1.2.0", "hm-epsilon==1.0", "hm-never==1.0"} <= set(lock)
    names = {line.split("==")[0] for line in lock}
    assert not names & {"papermill", "ipykernel", "tornado", "jupyter-client", "pip", "setuptools"}
    assert "hivemind-jupyter" not in names
    assert captured.environment.mode == "freeze" and captured.environment.package_count == len(lock)


# -- the person's own choices ------------------------------------------------------------------


def test_explicit_choices_win(site: Path) -> None:
    none = capture(EnvironmentChoice.from_options("none"), Sources(code=["import hm_alpha"]))
    assert none.environment.mode == "none" and none.entries == {}
    image = capture(EnvironmentChoice.from_options(image="lab/analysis:2024"), Sources())
    assert (image.environment.mode, image.environment.image) == ("image", "lab/analysis:2024")
    assert image.entries == {}
    text = b"numpy==2.1.0\npandas\n"
    chosen = capture(EnvironmentChoice.from_options(requirements=text), Sources(code=["import hm_alpha"]))
    assert chosen.environment.mode == "requirements" and chosen.entries == {"requirements.txt": text}
    assert chosen.environment.package_count == 2
    pinned = capture(EnvironmentChoice.from_options(python="3.12"), Sources(code=["import hm_alpha"]))
    assert pinned.environment.python_version == "3.12" and pinned.environment.require_python


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"env": "conda"}, "--env must be auto, none, freeze, requirements or image, not 'conda'"),
        ({"env": "requirements"}, "--env requirements needs the file: --requirements FILE"),
        ({"env": "image"}, "--env image needs the image's name: --image NAME"),
        ({"env": "none", "requirements": b"numpy\n"}, "--env none and --requirements contradict"),
        ({"env": "auto", "image": "lab/x"}, "--env auto and --image contradict"),
        ({"requirements": b"numpy\n", "image": "lab/x"}, "not both"),
        ({"image": "Lab Image!"}, "is not an image name"),
        ({"python": "2.7.x"}, "--python: '2.7.x' is not a Python version"),
        ({"python": "3"}, "is not a Python version"),
        ({"requirements": b"-e ./mine\n"}, "-e is not allowed"),
        ({"requirements": b"-r other.txt\n"}, "-r is not allowed"),
        ({"requirements": b"--index-url https://example.org/simple\n"}, "--index-url is not allowed"),
        ({"requirements": b"numpy==2.0 --hash=sha256:abc123\n"}, "hash is 6 hex digits long"),
        ({"requirements": b"../evil/pkg\n"}, "is a path or URL"),
        ({"requirements": b"evil/pkg==1.0\n"}, "is a path or URL"),
        ({"requirements": "".join(f"p{i}==1.0\n" for i in range(5000)).encode()}, "more than 2000"),
    ],
)
def test_bad_choices_are_refused_with_what_to_do(options: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        EnvironmentChoice.from_options(**options)  # type: ignore[arg-type]
    assert message in str(caught.value)


def test_the_gpu_hint(site: Path) -> None:
    hint = "this cell imports torch but asks for no GPU: add --gpus 1 to run it on a GPU"
    assert hint in cell("import torch\n", gpus=0).notices
    assert not any("GPU" in n for n in cell("import torch\n", gpus=1).notices)
    assert not any("GPU" in n for n in cell("import hm_alpha\n").notices)
    jax = capture(EnvironmentChoice.from_options("none"), Sources(code=["import jax.numpy as jnp"]))
    assert any("imports jax but asks for no GPU" in n for n in jax.notices)  # a hint in every mode
