"""The signed-in user's pool credential, kept in one 0600 file shared by the CLI and Jupyter."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hivemind_nodepool.protocol.errors import Unauthenticated
from hivemind_nodepool.protocol.files import atomic_write

CREDENTIALS_FILE = "credentials.json"


def config_dir() -> Path:
    """$HIVEMIND_CONFIG_DIR, or ~/.config/hivemind."""
    override = os.environ.get("HIVEMIND_CONFIG_DIR")
    return Path(override) if override else Path.home() / ".config" / "hivemind"


@dataclass
class Credential:
    pool: str
    user: str
    token: str
    expires_at: float
    ca_file: str | None = None
    insecure: bool = False

    @property
    def expired(self) -> bool:
        return bool(self.expires_at) and self.expires_at < time.time()


def save(credential: Credential, directory: Path | None = None) -> Path:
    """Write the credential atomically, readable by its owner only."""
    folder = directory or config_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return atomic_write(folder / CREDENTIALS_FILE, json.dumps(asdict(credential)))


def load(directory: Path | None = None) -> Credential | None:
    """The saved credential, or None when nobody is signed in."""
    path = (directory or config_dir()) / CREDENTIALS_FILE
    try:
        data = json.loads(path.read_text())
        return Credential(**data)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        return None


def require(directory: Path | None = None) -> Credential:
    """The saved credential, or an error that says how to sign in."""
    credential = load(directory)
    if credential is None:
        raise Unauthenticated("not signed in to a HiveMind pool: run `hivemind login --pool HOST:PORT`")
    if credential.expired:
        raise Unauthenticated("your HiveMind sign-in has expired: run `hivemind login` again")
    return credential


def clear(directory: Path | None = None) -> None:
    (directory or config_dir()).joinpath(CREDENTIALS_FILE).unlink(missing_ok=True)
