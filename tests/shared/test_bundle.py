"""The safe ZIP module: hostile archives are refused before anything lands outside the folder."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest

from hivemind_nodepool.protocol.bundle import (
    BundleError,
    BundleLimits,
    collect_files,
    list_files,
    pack,
    read_member,
    safe_extract,
)
from hivemind_nodepool.protocol.errors import InvalidInput


def _zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return path


def _outside_untouched(tmp_path: Path) -> set[str]:
    return {p.name for p in tmp_path.iterdir()}


def test_a_plain_bundle_unpacks(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "ok.zip", [("main.ipynb", b"{}"), ("data/x.csv", b"1,2\n")])
    written = safe_extract(archive, tmp_path / "out")
    assert written == 6
    assert (tmp_path / "out" / "data" / "x.csv").read_bytes() == b"1,2\n"
    assert list_files(archive) == ["main.ipynb", "data/x.csv"]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../evil.txt", "climbs out"),
        ("a/../../evil.txt", "climbs out"),
        ("/etc/evil.txt", "absolute"),
        ("C:/evil.txt", "absolute"),
        ("a\\..\\evil.txt", "backslash"),
    ],
)
def test_escaping_names_are_refused(tmp_path: Path, name: str, reason: str) -> None:
    archive = _zip(tmp_path / "bad.zip", [("main.ipynb", b"{}"), (name, b"x")])
    before = _outside_untouched(tmp_path)
    with pytest.raises(BundleError, match=reason):
        safe_extract(archive, tmp_path / "out")
    assert _outside_untouched(tmp_path) - before <= {"out"}
    assert not (tmp_path / "evil.txt").exists()
    assert not any((tmp_path / "out").rglob("*")), "nothing is written when any entry is bad"


def test_symlinks_are_refused(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = _zip(tmp_path / "link.zip", [(link, b"/etc/passwd")])
    with pytest.raises(BundleError, match="symbolic link"):
        safe_extract(archive, tmp_path / "out")


def test_duplicates_and_overlaps_are_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "dup.zip", "w") as archive:
        archive.writestr("a.txt", b"1")
        with pytest.warns(UserWarning):
            archive.writestr("a.txt", b"2")
    with pytest.raises(BundleError, match="twice"):
        safe_extract(tmp_path / "dup.zip", tmp_path / "out")
    _zip(tmp_path / "case.zip", [("A.txt", b"1"), ("a.txt", b"2")])
    with pytest.raises(BundleError, match="twice"):
        list_files(tmp_path / "case.zip")
    _zip(tmp_path / "overlap.zip", [("a", b"file"), ("a/b", b"inside a file")])
    with pytest.raises(BundleError, match="which is a file"):
        list_files(tmp_path / "overlap.zip")


def test_a_zip_bomb_is_refused_by_ratio(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "bomb.zip", [("zeros.bin", b"\0" * (50 * 1024 * 1024))])
    with pytest.raises(BundleError, match="zip bomb"):
        safe_extract(archive, tmp_path / "out")


def test_total_size_and_file_count_caps(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "many.zip", [(f"f{i}.txt", b"x") for i in range(50)])
    with pytest.raises(BundleError, match="entries"):
        safe_extract(archive, tmp_path / "out", BundleLimits(max_files=10))
    big = _zip(tmp_path / "big.zip", [("a.bin", bytes(range(256)) * 4096)])
    with pytest.raises(BundleError, match="more than"):
        safe_extract(big, tmp_path / "out2", BundleLimits(max_unpacked_bytes=1000))


def test_lying_sizes_are_caught_while_unpacking(tmp_path: Path) -> None:
    # Declare 10 bytes in the central directory, store 100 000: counting bytes catches it.
    payload = b"y" * 100_000
    path = tmp_path / "liar.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("data.bin", payload)
    raw = bytearray(path.read_bytes())
    central = raw.rfind(b"PK\x01\x02")
    raw[central + 24 : central + 28] = (10).to_bytes(4, "little")  # uncompressed size
    path.write_bytes(bytes(raw))
    with pytest.raises((BundleError, zipfile.BadZipFile)):
        safe_extract(path, tmp_path / "out")
    written = tmp_path / "out" / "data.bin"
    assert not written.exists() or written.stat().st_size <= 10


def test_garbage_is_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "garbage.zip"
    path.write_bytes(b"this is not a zip" * 10)
    with pytest.raises(BundleError, match="not a readable ZIP"):
        list_files(path)


def test_collect_honours_ignore_files_and_skips_links(tmp_path: Path) -> None:
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    (root / "main.ipynb").write_text("{}")
    (root / "data" / "keep.csv").write_text("1")
    (root / "data" / "huge.bin").write_bytes(b"0" * 10)
    (root / "secret.env").write_text("TOKEN=1")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("x")
    (root / ".gitignore").write_text("*.env\n")
    (root / ".hivemindignore").write_text("data/*.bin\n")
    (root / "link").symlink_to("/etc/passwd")
    names = sorted(name for name, _, _ in collect_files(root))
    assert names == [".gitignore", ".hivemindignore", "data/keep.csv", "main.ipynb"]


def test_pack_names_the_biggest_files_past_the_cap(tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / "big.bin").write_bytes(b"0" * 3_000_000)
    (root / "small.txt").write_text("hi")
    files = [(name, path) for name, path, _ in collect_files(root)]
    with pytest.raises(InvalidInput, match=r"big\.bin"):
        pack(tmp_path / "b.zip", files, max_bytes=1_000_000)
    assert not (tmp_path / "b.zip").exists()
    packed = pack(tmp_path / "b.zip", files, {"hivemind.json": b"{}"})
    assert packed.files == 3
    assert read_member(packed.path, "hivemind.json") == b"{}"
    assert read_member(packed.path, "missing") is None


def test_read_member_is_bounded(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "m.zip", [("hivemind.json", b"x" * 2000)])
    with pytest.raises(BundleError, match="larger"):
        read_member(archive, "hivemind.json", max_bytes=100)
    assert io.BytesIO(read_member(archive, "hivemind.json") or b"").read() == b"x" * 2000
