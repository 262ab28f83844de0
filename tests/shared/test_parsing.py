"""What people type: sizes, durations, addresses, parameters and labels."""

from __future__ import annotations

import json
import os
import stat
import zipfile
from pathlib import Path

import pytest

from hivemind_nodepool.client import credentials
from hivemind_nodepool.client.submission import TaskRequest, package_path, parse_assignment, parse_labels
from hivemind_nodepool.protocol.errors import InvalidInput, Unauthenticated
from hivemind_nodepool.protocol.units import format_duration, format_size, parse_duration, parse_size
from hivemind_nodepool.protocol.wire import check_plaintext_allowed, is_loopback, split_address


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512M", 512 * 1024**2),
        ("8G", 8 * 1024**3),
        ("1.5GiB", int(1.5 * 1024**3)),
        ("1000", 1000),
        ("2g", 2 * 1024**3),
        (" 4 GB ", 4 * 1024**3),
    ],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1G", "8X", "1e9999G", "G"])
def test_bad_sizes_say_what_to_type(text: str) -> None:
    with pytest.raises(InvalidInput, match="not a size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("30m", 1800), ("1h30m", 5400), ("7d", 604800), ("2w", 1209600)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5x", "-5m", "m5"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(InvalidInput, match="not a duration"):
        parse_duration(text)


def test_formatting() -> None:
    assert format_size(1536) == "1.5 KiB"
    assert format_duration(3.25) == "3.2s"
    assert format_duration(3725) == "1h 02m"


@pytest.mark.parametrize(
    ("address", "parts"),
    [
        ("localhost:50051", ("localhost", 50051)),
        ("pool.lab", ("pool.lab", 50051)),
        ("[::1]:7000", ("::1", 7000)),
        ("10.0.0.5:1", ("10.0.0.5", 1)),
    ],
)
def test_addresses(address: str, parts: tuple[str, int]) -> None:
    assert split_address(address) == parts


@pytest.mark.parametrize("address", ["", ":50051", "host:port", "host:99999"])
def test_bad_addresses(address: str) -> None:
    with pytest.raises(InvalidInput):
        split_address(address)


def test_plaintext_only_on_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    check_plaintext_allowed("127.0.0.1", insecure=False)
    with pytest.raises(InvalidInput, match="--insecure"):
        check_plaintext_allowed("0.0.0.0", insecure=False)  # listening on every interface
    with pytest.raises(InvalidInput, match="TLS"):
        check_plaintext_allowed("192.0.2.10", insecure=False)
    check_plaintext_allowed("192.0.2.10", insecure=True)


def test_parameters_and_labels() -> None:
    assert parse_assignment("alpha=0.5") == ("alpha", 0.5)
    assert parse_assignment("name=hello") == ("name", "hello")
    assert parse_assignment("xs=[1, 2]") == ("xs", [1, 2])
    for bad in ["=1", "no-equals", "1x=2", "a b=3"]:
        with pytest.raises(InvalidInput):
            parse_assignment(bad)
    assert parse_labels(["gpu=a100,site=b", "os=linux"]) == {"gpu": "a100", "site": "b", "os": "linux"}
    with pytest.raises(InvalidInput):
        parse_labels(["gpu"])


def test_credentials_are_private(tmp_path: Path) -> None:
    with pytest.raises(Unauthenticated, match="hivemind login"):
        credentials.require(tmp_path)
    saved = credentials.Credential(pool="localhost:1", user="ada", token="t" * 40, expires_at=4e9)
    path = credentials.save(saved, tmp_path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert credentials.require(tmp_path) == saved
    credentials.save(credentials.Credential("localhost:1", "ada", "t", expires_at=1.0), tmp_path)
    with pytest.raises(Unauthenticated, match="expired"):
        credentials.require(tmp_path)
    path.write_text("{not json")
    assert credentials.load(tmp_path) is None


def test_packaging_a_notebook_takes_its_folder(tmp_path: Path) -> None:
    (tmp_path / "analysis.ipynb").write_text("{}")
    (tmp_path / "data.csv").write_text("1")
    (tmp_path / ".hivemindignore").write_text("*.csv\n")
    manifest, packed = package_path(
        tmp_path / "analysis.ipynb",
        TaskRequest(cpus=2, memory="1G", parameters={"n": 3}, timeout="5m"),
        workdir=tmp_path,
    )
    assert manifest.entry_notebook == "analysis.ipynb"
    assert manifest.resources.memory_bytes == 1024**3 and manifest.timeout_seconds == 300
    assert json.loads(manifest.parameters_json) == {"n": 3}
    with zipfile.ZipFile(packed.path) as archive:
        names = set(archive.namelist())
        stored = json.loads(archive.read("hivemind.json"))
    assert names == {"analysis.ipynb", ".hivemindignore", "hivemind.json"}
    assert stored["entry_notebook"] == "analysis.ipynb"


def test_packaging_refuses_what_cannot_run(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        package_path(tmp_path / "nope", TaskRequest())
    (tmp_path / "a.ipynb").write_text("{}")
    (tmp_path / "b.ipynb").write_text("{}")
    with pytest.raises(InvalidInput, match="--entry"):
        package_path(tmp_path, TaskRequest())
    with pytest.raises(InvalidInput, match="more than 0"):
        package_path(tmp_path / "a.ipynb", TaskRequest(cpus=0))
    with pytest.raises(InvalidInput, match="not a size"):
        package_path(tmp_path / "a.ipynb", TaskRequest(memory="lots"))
