"""The signed-in pool connection, shared by the server extension and the magics.

Both read the same 0600 credential file as the `hivemind` CLI, so signing in anywhere signs in
everywhere for this OS user. Clients are cached per credential so channels are reused.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from hivemind_nodepool.client import PoolClient, credentials
from hivemind_nodepool.client.credentials import Credential
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.errors import InvalidInput, Unauthenticated

from .config import HiveMind

log = logging.getLogger(__name__)

NOT_SIGNED_IN = (
    "not signed in to a HiveMind pool: sign in from the HiveMind panel, run `%hivemind login` "
    "in a notebook, or `hivemind login --pool HOST:PORT` in a terminal"
)


class PoolConnector:
    """Hands out a PoolClient for the saved credential; signs in and out."""

    def __init__(self, settings: HiveMind, config_dir: Path | None = None) -> None:
        self.settings = settings
        self.config_dir = config_dir
        self._lock = threading.Lock()
        self._key: tuple[str, str, str, bool] | None = None
        self._client: PoolClient | None = None

    def credential(self) -> Credential | None:
        return credentials.load(self.config_dir)

    def pool_address(self) -> str | None:
        saved = self.credential()
        if saved is not None:
            return saved.pool
        return self.settings.pool_address or None

    def _ca_and_insecure(self, saved: Credential | None = None) -> tuple[str, bool]:
        ca = (saved.ca_file if saved and saved.ca_file else None) or self.settings.ca_file
        insecure = bool(saved.insecure) if saved else False
        return ca, insecure or self.settings.insecure

    def client(self) -> PoolClient:
        """A client signed in with the saved credential; Unauthenticated when there is none."""
        saved = self.credential()
        if saved is None:
            raise Unauthenticated(NOT_SIGNED_IN)
        if saved.expired:
            raise Unauthenticated("your HiveMind sign-in has expired: sign in again")
        ca, insecure = self._ca_and_insecure(saved)
        key = (saved.pool, saved.token, ca, insecure)
        with self._lock:
            if self._key != key or self._client is None:
                if self._client is not None:
                    self._client.close()
                self._client = PoolClient(
                    saved.pool, token=saved.token, ca_file=ca or None, insecure=insecure
                )
                self._key = key
            return self._client

    def new_client(self) -> PoolClient:
        """A client of its own (its own channel), for a long watch that is stopped by closing it."""
        saved = self.credential()
        if saved is None:
            raise Unauthenticated(NOT_SIGNED_IN)
        ca, insecure = self._ca_and_insecure(saved)
        return PoolClient(saved.pool, token=saved.token, ca_file=ca or None, insecure=insecure)

    def sign_in(self, username: str, password: str, pool: str | None = None) -> tuple[Credential, pb.User]:
        """Log in to the pool and save the credential (0600)."""
        address = (pool or "").strip() or self.settings.pool_address
        if not address:
            raise InvalidInput("no pool address: give one (HOST:PORT) or set c.HiveMind.pool_address")
        if not username or not password:
            raise InvalidInput("both a username and a password are needed to sign in")
        ca, insecure = self._ca_and_insecure()
        with PoolClient(address, ca_file=ca or None, insecure=insecure) as anonymous:
            answer = anonymous.login(username, password)
        saved = Credential(
            pool=address,
            user=answer.user.name or username,
            token=answer.token,
            expires_at=answer.expires_at,
            ca_file=ca or None,
            insecure=insecure,
        )
        credentials.save(saved, self.config_dir)
        log.info("signed in to %s as %s", address, saved.user)
        return saved, answer.user

    def sign_out(self) -> None:
        """Revoke the token when the pool answers; forget it either way."""
        saved = self.credential()
        if saved is not None:
            try:
                self.client().logout()
            except Exception as exc:  # the local sign-out must happen even when the pool is down
                log.info("could not revoke the token on %s: %s", saved.pool, exc)
        credentials.clear(self.config_dir)
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client = None
            self._key = None

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client = None
            self._key = None
