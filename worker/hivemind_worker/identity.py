"""The worker's identity in its state dir: its id and credential, in a file only its owner reads.

A restart rejoins as the same worker without a join token. The identity names the pool it belongs
to, so pointing a state dir at another pool asks for a join token instead of sending a credential
the other pool never issued. With that join token the worker still asks to be its old self (the
same pool may only have moved to another address): it sends its old id and a proof bound to the
token, never the credential (hivemind_nodepool.protocol.rejoin).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from hivemind_nodepool.protocol.files import atomic_write
from hivemind_nodepool.protocol.private import make_private

from .errors import WorkerError

IDENTITY_FILE = "identity.json"


@dataclass
class Identity:
    worker_id: str
    credential: str
    pool: str


def prepare_state_dir(path: Path) -> Path:
    """Create the state dir (0700), refuse one of another user, and make one that others could
    read private again (said in the log): it holds the credential, bundles and task folders."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = path.stat()
    if info.st_uid != os.geteuid():
        raise WorkerError(f"the state dir {path} belongs to another user")
    make_private(path, "the worker's state folder")
    return path


def load(state_dir: Path, pool: str) -> Identity | None:
    """The saved identity for this pool, or None."""
    identity = load_any(state_dir)
    return identity if identity is not None and identity.pool == pool else None


def load_any(state_dir: Path) -> Identity | None:
    """The saved identity, whichever pool address it was made for, or None."""
    path = state_dir / IDENTITY_FILE
    try:
        data = json.loads(path.read_text())
        identity = Identity(**data)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise WorkerError(f"{path} is damaged ({exc}); delete it and join again with a join token") from None
    if path.stat().st_mode & 0o077:
        raise WorkerError(f"{path} is readable by others; it holds a secret: chmod 600 it")
    return identity


def save(state_dir: Path, identity: Identity) -> Path:
    """Write atomically with mode 0600 from the first byte."""
    return atomic_write(state_dir / IDENTITY_FILE, json.dumps(asdict(identity)))


def forget(state_dir: Path) -> None:
    (state_dir / IDENTITY_FILE).unlink(missing_ok=True)
