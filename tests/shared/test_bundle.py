"""The safe ZIP module: hostile archives are refused before anything lands outside the folder;
ordinary Linux names and compressible data come through, renamed only where they cannot exist."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import pytest

from hivemind_nodepool.protocol.bundle import (
    BundleError,
    BundleLimits,
    LocalNames,
    collect_files,
    extract,
    extract_new_folder,
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
    _zip(tmp_path / "overlap.zip", [("a", b"file"), ("a/b", b"inside a file")])
    with pytest.raises(BundleError, match="which is a file"):
        list_files(tmp_path / "overlap.zip")


def test_compressible_data_is_not_a_zip_bomb(tmp_path: Path) -> None:
    """50 MiB of zeros packs to a few hundred KiB: ordinary data, unpacked in full. What bounds a
    bomb is the declared size, capped and counted while unpacking (the tests below)."""
    archive = _zip(tmp_path / "zeros.zip", [("zeros.bin", b"\0" * (50 * 1024 * 1024))])
    assert archive.stat().st_size < 1024 * 1024
    assert safe_extract(archive, tmp_path / "out") == 50 * 1024 * 1024
    assert (tmp_path / "out" / "zeros.bin").stat().st_size == 50 * 1024 * 1024


def test_names_that_differ_in_case_are_two_files(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "case.zip", [("out/A.txt", b"1"), ("out/a.txt", b"2"), ("Out/b", b"3")])
    assert sorted(list_files(archive)) == ["Out/b", "out/A.txt", "out/a.txt"]
    here = extract(archive, tmp_path / "sensitive", names=LocalNames(case_insensitive=False))
    assert here.renamed == {}
    assert (tmp_path / "sensitive" / "out" / "a.txt").read_bytes() == b"2"
    # Where the filesystem ignores case, the second of each clash gets a name of its own, and the
    # caller is told; nothing is lost or overwritten.
    folded = extract(archive, tmp_path / "insensitive", names=LocalNames(case_insensitive=True))
    assert folded.renamed == {"out/a.txt": "out/a~2.txt", "Out/b": "out/b"}
    assert (tmp_path / "insensitive" / "out" / "A.txt").read_bytes() == b"1"
    assert (tmp_path / "insensitive" / "out" / "a~2.txt").read_bytes() == b"2"
    assert (tmp_path / "insensitive" / "out" / "b").read_bytes() == b"3"


def test_a_backslash_is_part_of_a_posix_name_and_renamed_for_windows(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "bs.zip", [("outputs/a\\b.txt", b"x"), ("a\\..\\evil.txt", b"y")])
    posix = extract(archive, tmp_path / "posix", names=LocalNames(windows=False))
    assert posix.renamed == {}
    assert (tmp_path / "posix" / "outputs" / "a\\b.txt").read_bytes() == b"x"
    assert (tmp_path / "posix" / "a\\..\\evil.txt").read_bytes() == b"y"
    assert not (tmp_path / "evil.txt").exists()
    windows = extract(archive, tmp_path / "win", names=LocalNames(windows=True, case_insensitive=True))
    assert windows.renamed == {"outputs/a\\b.txt": "outputs/a_b.txt", "a\\..\\evil.txt": "a_.._evil.txt"}
    assert sorted(p.name for p in (tmp_path / "win").rglob("*")) == ["a_.._evil.txt", "a_b.txt", "outputs"]


@pytest.mark.parametrize(
    ("name", "local"),
    [
        ("outputs/CON.txt", "outputs/_CON.txt"),
        ("outputs/nul", "outputs/_nul"),
        ("outputs/a:b?.csv", "outputs/a_b_.csv"),
        ("outputs/dots...", "outputs/dots___"),
        ("outputs/tab\there", "outputs/tab_here"),
        ("aux/x.txt", "_aux/x.txt"),
    ],
)
def test_names_windows_cannot_hold_are_renamed(tmp_path: Path, name: str, local: str) -> None:
    archive = _zip(tmp_path / "w.zip", [(name, b"data")])
    unpacked = extract(archive, tmp_path / "out", names=LocalNames(windows=True, case_insensitive=True))
    assert unpacked.renamed == {name: local}
    assert (tmp_path / "out" / local).read_bytes() == b"data"


def test_a_name_too_long_for_the_filesystem_is_shortened(tmp_path: Path) -> None:
    long = "outputs/" + "x" * 300 + ".csv"
    unpacked = extract(_zip(tmp_path / "l.zip", [(long, b"1")]), tmp_path / "out")
    written = unpacked.renamed[long]
    assert written.startswith("outputs/xxx") and written.endswith(".csv") and len(written) < 270
    assert (tmp_path / "out" / written).read_bytes() == b"1"


def test_a_file_and_a_folder_that_differ_only_in_case(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "fd.zip", [("data", b"file"), ("DATA/inner.txt", b"inner")])
    unpacked = extract(archive, tmp_path / "out", names=LocalNames(case_insensitive=True))
    assert unpacked.renamed == {"DATA/inner.txt": "DATA~2/inner.txt"}
    assert (tmp_path / "out" / "data").read_bytes() == b"file"
    assert (tmp_path / "out" / "DATA~2" / "inner.txt").read_bytes() == b"inner"


def test_the_destination_must_be_empty(tmp_path: Path) -> None:
    """An archive never lands in a folder that holds something: the user's files there stay."""
    mine = tmp_path / "out"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    archive = _zip(tmp_path / "r.zip", [("notes.txt", b"overwritten!")])
    with pytest.raises(BundleError, match="not empty"):
        safe_extract(archive, mine)
    with pytest.raises(BundleError, match="already exists"):
        extract_new_folder(archive, mine)
    assert (mine / "notes.txt").read_text() == "my notes"


def test_a_new_folder_is_whole_or_absent(tmp_path: Path) -> None:
    good = _zip(tmp_path / "good.zip", [("a.txt", b"1"), ("b/c.txt", b"2")])
    assert extract_new_folder(good, tmp_path / "res" / "one").files == 2
    assert (tmp_path / "res" / "one" / "b" / "c.txt").read_bytes() == b"2"
    bad = _zip(tmp_path / "bad.zip", [("a.txt", b"1"), ("b.bin", bytes(range(256)) * 100)])
    with pytest.raises(BundleError, match="more than"):
        extract_new_folder(bad, tmp_path / "res" / "two", BundleLimits(max_unpacked_bytes=1000))
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["one"], "staging or half a result left"


@pytest.mark.parametrize("kind", [stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK])
def test_device_and_special_entries_are_refused(tmp_path: Path, kind: int) -> None:
    device = zipfile.ZipInfo("outputs/dev")
    device.external_attr = (kind | 0o666) << 16
    archive = _zip(tmp_path / "dev.zip", [("ok.txt", b"1"), (device, b"")])
    with pytest.raises(BundleError, match="not a regular file"):
        safe_extract(archive, tmp_path / "out")
    assert not any((tmp_path / "out").rglob("*"))


def _patch_directory_count(path: Path, count: int) -> None:
    """Make the end-of-directory record claim `count` entries (as a forged archive would)."""
    raw = bytearray(path.read_bytes())
    end = raw.rfind(b"PK\x05\x06")
    raw[end + 8 : end + 12] = (count & 0xFFFF).to_bytes(2, "little") * 2
    path.write_bytes(bytes(raw))


def test_a_million_entries_are_refused_before_the_directory_is_parsed(tmp_path: Path) -> None:
    """zipfile builds an object per entry before any check: a million tiny entries cost half a GiB.
    The count is checked first, on the end record and by walking the directory, which stops at
    the limit; a record that lies about the count does not get past the walk."""
    archive = _zip(tmp_path / "many.zip", [(f"f{i}", b"") for i in range(300)])
    with pytest.raises(BundleError, match="300 entries; the limit is 100"):
        list_files(archive, BundleLimits(max_files=100))
    _patch_directory_count(archive, 3)  # claims 3, holds 300
    with pytest.raises(BundleError, match="more than 100 entries"):
        safe_extract(archive, tmp_path / "out", BundleLimits(max_files=100))
    assert not any((tmp_path / "out").rglob("*"))
    huge = _zip(tmp_path / "claims.zip", [("a", b"1")])
    raw = bytearray(huge.read_bytes())
    end = raw.rfind(b"PK\x05\x06")
    raw[end + 8 : end + 12] = (0xFFFF).to_bytes(2, "little") * 2  # "65535 entries" in a tiny archive
    huge.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="65535 entries"):
        list_files(huge)  # default limit 20 000


def test_a_huge_declared_size_is_refused_before_writing(tmp_path: Path) -> None:
    """A sparse 10 GB file, or a header that claims one: the declared size is capped up front."""
    path = _zip(tmp_path / "sparse.zip", [("outputs/sparse.bin", b"\0" * 4096)])
    raw = bytearray(path.read_bytes())
    central = raw.rfind(b"PK\x01\x02")
    raw[central + 24 : central + 28] = (0xFFFFFFF0).to_bytes(4, "little")  # ~4 GiB uncompressed
    path.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="more than 1073741824 bytes"):
        safe_extract(path, tmp_path / "out", BundleLimits(max_unpacked_bytes=1024**3))
    assert not any((tmp_path / "out").rglob("*"))


def test_names_a_zip_cannot_store_are_escaped_when_packing(tmp_path: Path) -> None:
    """A Linux file name is bytes and need not be UTF-8; it is stored with visible escapes."""
    folder = tmp_path / "f"
    folder.mkdir()
    odd = os.fsdecode(b"caf\xe9.txt")
    (folder / odd).write_bytes(b"latin-1 name")
    (folder / "plain.txt").write_bytes(b"plain")
    packed = pack(tmp_path / "p.zip", [(n, p) for n, p, _ in collect_files(folder)])
    assert packed.renamed == {odd: "caf\\xe9.txt"}
    assert sorted(list_files(packed.path)) == ["caf\\xe9.txt", "plain.txt"]


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
