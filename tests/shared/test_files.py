"""The one atomic write: secrets are 0600 from the first byte, and a failed write leaves the old
file whole and no temporary file behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from hivemind_nodepool.client import credentials
from hivemind_nodepool.protocol import files
from hivemind_nodepool.protocol.files import atomic_write


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_file_is_private_and_whole(tmp_path: Path) -> None:
    target = atomic_write(tmp_path / "secret.json", '{"token": "t"}')
    assert target == tmp_path / "secret.json"
    assert target.read_text() == '{"token": "t"}'
    assert mode_of(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret.json"]


def test_replacing_a_readable_file_makes_it_private(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_text("old")
    target.chmod(0o644)
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert mode_of(target) == 0o600


def test_a_public_mode_is_given_exactly(tmp_path: Path) -> None:
    target = atomic_write(tmp_path / "ca.pem", b"cert", mode=0o644)
    assert mode_of(target) == 0o644


def test_the_temporary_file_is_private_before_any_byte_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    real_fdopen = os.fdopen

    def spying_fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(files.os, "fdopen", spying_fdopen)
    atomic_write(tmp_path / "secret", "s", mode=0o644)
    assert seen == [0o600]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_partial_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    target = tmp_path / "identity.json"
    target.write_text("old and whole")

    def broken(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(files.os, failing, broken)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, "new " * 10_000)
    assert target.read_text() == "old and whole"
    assert [p.name for p in tmp_path.iterdir()] == ["identity.json"]


def test_a_failed_first_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "fsync", broken)
    with pytest.raises(OSError):
        atomic_write(tmp_path / "credentials.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_credentials_and_worker_identity_use_it(tmp_path: Path) -> None:
    from hivemind_worker import identity

    saved = credentials.save(credentials.Credential("pool:1", "ada", "tok", 0.0), tmp_path / "cfg")
    assert mode_of(saved) == 0o600
    assert credentials.load(tmp_path / "cfg") == credentials.Credential("pool:1", "ada", "tok", 0.0)
    state = identity.prepare_state_dir(tmp_path / "state")
    written = identity.save(state, identity.Identity("w-1", "secret", "pool:1"))
    assert mode_of(written) == 0o600
    assert identity.load(state, "pool:1") == identity.Identity("w-1", "secret", "pool:1")
    assert sorted(p.name for p in state.iterdir()) == ["identity.json"]
