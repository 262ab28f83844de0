"""A temporary site-packages with small fake distributions, as pip would leave them on disk."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


def add_distribution(
    site: Path,
    name: str,
    version: str,
    *,
    requires: Sequence[str] = (),
    modules: Sequence[str] = (),
    top_level: bool = True,
    metadata: bool = True,
    direct_url: dict[str, object] | None = None,
    extras: Sequence[str] = (),
) -> Path:
    """A dist-info folder (METADATA, RECORD, top_level.txt, direct_url.json) plus its modules."""
    folder = site / f"{name.replace('-', '_')}-{version}.dist-info"
    folder.mkdir(parents=True)
    record = []
    for module in modules:
        package = site / module
        package.mkdir(exist_ok=True)
        (package / "__init__.py").write_text(f"VERSION = {version!r}\n")
        record.append(f"{module}/__init__.py,,")
    if metadata:
        lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
        lines += [f"Provides-Extra: {extra}" for extra in extras]
        lines += [f"Requires-Dist: {line}" for line in requires]
        (folder / "METADATA").write_text("\n".join(lines) + "\n")
        record.append(f"{folder.name}/METADATA,,")
    if top_level and modules:
        (folder / "top_level.txt").write_text("\n".join(modules) + "\n")
    if direct_url is not None:
        (folder / "direct_url.json").write_text(json.dumps(direct_url))
    (folder / "RECORD").write_text("\n".join([*record, f"{folder.name}/RECORD,,"]) + "\n")
    return folder


def local_project(root: Path, name: str, version: str, module: str, body: str = "") -> Path:
    """A tiny pyproject project (setuptools, src layout) that pip can build without an index."""
    project = root / name
    (project / "src" / module).mkdir(parents=True)
    (project / "src" / module / "__init__.py").write_text(body or f"VERSION = {version!r}\n")
    (project / "pyproject.toml").write_text(
        "[build-system]\n"
        'requires = ["setuptools>=61"]\n'
        'build-backend = "setuptools.build_meta"\n\n'
        "[project]\n"
        f'name = "{name}"\n'
        f'version = "{version}"\n\n'
        "[tool.setuptools.packages.find]\n"
        'where = ["src"]\n'
    )
    return project
