"""A folder sent with a task leaves the user's secrets behind: HiveMind's own credentials always,
well-known secret places and private keys unless .hivemindignore asks for one with `!NAME`."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from hivemind_jupyter.packaging import pack_cell
from hivemind_nodepool.client import credentials
from hivemind_nodepool.client.submission import TaskRequest, package_path
from hivemind_nodepool.protocol.bundle import left_out_notice, scan_folder

TOKEN = "hm-secret-pool-token-0123456789"
KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
NOTEBOOK = json.dumps(
    {
        "cells": [],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
)


def home_like_folder(root: Path) -> Path:
    """A folder laid out like a home directory, with the secrets people keep in one."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "analysis.ipynb").write_text(NOTEBOOK)
    (root / "data.csv").write_text("a,b\n1,2\n")
    (root / "notes").mkdir()
    (root / "notes" / "readme.md").write_text("how to use ssh: -----BEGIN is how a key starts\n")
    # HiveMind's own credential, written as `hivemind login` writes it, and a copy under another name
    credentials.save(
        credentials.Credential(pool="pool.lab:50051", user="ada", token=TOKEN, expires_at=0),
        root / ".config" / "hivemind",
    )
    (root / "backup-of-login.json").write_text(
        json.dumps({"pool": "pool.lab:50051", "user": "ada", "token": TOKEN, "expires_at": 0})
    )
    (root / "worker-state").mkdir()
    (root / "worker-state" / "identity.json").write_text(
        json.dumps({"worker_id": "w-1", "credential": TOKEN, "pool": "pool.lab:50051"})
    )
    secrets = {
        ".ssh/id_ed25519": KEY,
        ".ssh/known_hosts": "pool.lab ssh-ed25519 AAAA\n",
        ".gnupg/private-keys-v1.d/x.key": "gpg secret",
        ".aws/credentials": f"[default]\naws_secret_access_key = {TOKEN}\n",
        ".config/gcloud/application_default_credentials.json": json.dumps({"refresh_token": TOKEN}),
        ".netrc": f"machine pool.lab login ada password {TOKEN}\n",
        ".git-credentials": f"https://ada:{TOKEN}@git.lab\n",
        "certs/server.pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        "certs/server.key": KEY,
        ".env": f"API_TOKEN={TOKEN}\n",
        "deploy/.env.production": f"API_TOKEN={TOKEN}\n",
        "deploy/robot": KEY,  # a private key under a name no pattern knows: found by its content
        ".local/share/jupyter/runtime/jpserver-123.json": json.dumps({"token": TOKEN}),
        ".local/share/jupyter/runtime/kernel-abc.json": json.dumps(
            {"key": TOKEN, "signature_scheme": "hmac-sha256", "shell_port": 5}
        ),
        "kernel-copied.json": json.dumps({"key": TOKEN, "signature_scheme": "hmac-sha256", "shell_port": 5}),
    }
    for name, text in secrets.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def bundle_texts(path: Path) -> dict[str, str]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name).decode(errors="replace") for name in archive.namelist()}


def test_submit_leaves_secrets_out_and_says_so(tmp_path: Path) -> None:
    folder = home_like_folder(tmp_path / "home")
    _, packed = package_path(folder, TaskRequest(), workdir=tmp_path)
    texts = bundle_texts(packed.path)
    assert sorted(texts) == [
        "analysis.ipynb",
        "data.csv",
        "hivemind.json",
        "notes/readme.md",
    ], sorted(texts)
    assert not any(TOKEN in text or "PRIVATE KEY" in text for text in texts.values())
    left = {item.name: item for item in packed.left_out}
    for name in (
        ".ssh/",
        ".gnupg/",
        ".aws/",
        ".config/gcloud/",
        ".netrc",
        ".git-credentials",
        "certs/server.pem",
        "certs/server.key",
        ".env",
        "deploy/.env.production",
        "deploy/robot",
        ".local/share/jupyter/runtime/",
        "kernel-copied.json",
        ".config/hivemind/credentials.json",
        "backup-of-login.json",
        "worker-state/identity.json",
    ):
        assert name in left, (name, sorted(left))
    assert left["deploy/robot"].why == "private key"
    assert left[".ssh/"].files == 2
    assert not left[".config/hivemind/credentials.json"].can_include
    notice = left_out_notice(packed.left_out)
    assert "\n" not in notice and ".ssh/" in notice and "!NAME" in notice and ".hivemindignore" in notice
    assert "HiveMind credentials are never sent" in notice


def test_hivemindignore_includes_a_secret_on_purpose_but_never_hivemind_credentials(tmp_path: Path) -> None:
    folder = home_like_folder(tmp_path / "home")
    (folder / ".hivemindignore").write_text(
        "!.ssh/\n!certs/server.pem\n!deploy/robot\n!.config/hivemind/\n!backup-of-login.json\n"
        "!.config/gcloud/*.json\n"
    )
    _, packed = package_path(folder, TaskRequest(), workdir=tmp_path)
    names = set(bundle_texts(packed.path))
    assert {".ssh/id_ed25519", ".ssh/known_hosts", "certs/server.pem", "deploy/robot"} <= names
    assert "certs/server.key" not in names and ".env" not in names  # not asked for: still left out
    assert not any("hivemind/credentials" in name or name.endswith("identity.json") for name in names)
    assert "backup-of-login.json" not in names
    # as in git, a file inside a left-out folder comes only with its folder
    assert not any(name.startswith(".config/gcloud/") for name in names)
    assert TOKEN not in "".join(bundle_texts(packed.path).values()).replace(KEY, "")


def test_ignore_files_still_apply_on_top(tmp_path: Path) -> None:
    folder = home_like_folder(tmp_path / "home")
    (folder / ".gitignore").write_text("data.csv\n.ssh/\n")
    # a .gitignore negation does not send a secret: only .hivemindignore speaks for HiveMind
    (folder / "notes" / ".gitignore").write_text("!.env\n")
    scan = scan_folder(folder)
    names = [name for name, _, _ in scan.files]
    assert "data.csv" not in names and ".env" not in names
    left = [item.name for item in scan.left_out]
    assert ".ssh/" not in left  # ignored by .gitignore: skipped silently, as any ignored file
    assert ".env" in left


def test_the_cell_magic_folder_leaves_secrets_out(tmp_path: Path) -> None:
    folder = home_like_folder(tmp_path / "home")
    _, packed = pack_cell("print(1)", TaskRequest(), tmp_path / "cell.zip", folder=folder)
    texts = bundle_texts(packed.path)
    assert "data.csv" in texts and "main.ipynb" in texts
    assert not any(TOKEN in text or "PRIVATE KEY" in text for text in texts.values())
    assert ".ssh/" in [item.name for item in packed.left_out]


def test_a_folder_without_secrets_has_no_notice(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "nb.ipynb").write_text(NOTEBOOK)
    (tmp_path / "p" / "readme.md").write_text("PRIVATE KEY handling is described in -----BEGIN docs\n")
    _, packed = package_path(tmp_path / "p", TaskRequest(), workdir=tmp_path)
    assert packed.left_out == [] and left_out_notice(packed.left_out) == ""
    assert "readme.md" in bundle_texts(packed.path)
