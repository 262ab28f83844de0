"""Tiny pure-Python wheels made on the spot, so environment tests need no package index.

A wheel is a zip with the package's files and a `NAME-VERSION.dist-info` folder holding METADATA,
WHEEL and RECORD (PEP 427); installers check RECORD's hashes, so they are real ones.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def make_wheel(
    folder: Path,
    name: str,
    version: str,
    *,
    requires: tuple[str, ...] = (),
    requires_python: str = "",
    source: str = "",
) -> Path:
    """Write NAME-VERSION-py3-none-any.whl into folder; its module `name` has __version__ and
    whatever `source` adds. Returns the wheel's path."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    metadata = [f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"]
    metadata += [f"Requires-Dist: {requirement}\n" for requirement in requires]
    if requires_python:
        metadata.append(f"Requires-Python: {requires_python}\n")
    files = {
        f"{dist}/__init__.py": f"__version__ = {version!r}\n{source}",
        f"{info}/METADATA": "".join(metadata),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: hivemind-tests\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, text in files.items():
            data = text.encode()
            archive.writestr(member, data)
            record.append(f"{member},{_record_hash(data)},{len(data)}")
        record.append(f"{info}/RECORD,,")
        archive.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


def demo_wheelhouse(folder: Path) -> Path:
    """The test wheelhouse: hmdemo_alpha 1.0 and 1.1, hmdemo_beta 2.0 (needs alpha), hmdemo_delta
    1.0 (on its own), hmdemo_gamma 1.0 (only for Python 3.99 and later)."""
    make_wheel(folder, "hmdemo_alpha", "1.0")
    make_wheel(folder, "hmdemo_alpha", "1.1")
    make_wheel(folder, "hmdemo_beta", "2.0", requires=("hmdemo_alpha>=1.0",))
    make_wheel(folder, "hmdemo_delta", "1.0")
    make_wheel(folder, "hmdemo_gamma", "1.0", requires_python=">=3.99")
    return folder
