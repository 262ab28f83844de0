"""User accounts and join tokens: the one implementation behind both the NodePool service's admin
RPCs and `hivemind-nodepool user|join-token --data-dir` (which acts on the pool's files directly).

Each function takes the Store and answers the wire message; errors are HiveMindErrors. Permission
checks (who may call) stay with the caller: the service checks the principal, the local CLI is run
by whoever may read the pool's files.
"""

from __future__ import annotations

import secrets
import sqlite3
import time

from hivemind_nodepool.pool import auth, views
from hivemind_nodepool.pool.store import Store
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.errors import AlreadyExists, InvalidInput, NotFound


def add_user(store: Store, name: str, password: str, admin: bool) -> pb.User:
    """Create an account. Hashing the password takes a while (bcrypt): the service runs this in
    a thread."""
    auth.check_user_name(name)
    if store.get_user(name) is not None:
        raise AlreadyExists(f"user {name!r} already exists")
    password_hash = auth.hash_password(password)
    try:
        row = store.add_user(name, password_hash, admin)
    except sqlite3.IntegrityError:  # created by someone else since the check above
        raise AlreadyExists(f"user {name!r} already exists") from None
    return views.user(row)


def list_users(store: Store) -> list[pb.User]:
    return [views.user(row) for row in store.list_users()]


def disable_user(store: Store, name: str, by: str | None = None) -> pb.User:
    """Disable an account; its tokens stop working at once. by is the admin asking, who may not
    disable their own account (None: the pool's operator, acting on its files)."""
    if by is not None and name == by:
        raise InvalidInput("you cannot disable your own account")
    if store.get_user(name) is None:
        raise NotFound(f"no user {name!r}")
    store.set_user_disabled(name, True)
    row = store.get_user(name)
    assert row is not None
    return views.user(row)


def create_join_token(store: Store, created_by: str, ttl: float) -> pb.JoinToken:
    """A new join token; the secret is in the answer only, the store keeps its hash."""
    token_id = "jt-" + secrets.token_hex(4)
    secret = auth.new_token("hmj")
    store.add_join_token(token_id, auth.hash_secret(secret), time.time() + ttl, created_by)
    row = store.get_join_token(token_id)
    assert row is not None
    return views.join_token(row, secret)


def list_join_tokens(store: Store) -> list[pb.JoinToken]:
    return [views.join_token(row) for row in store.list_join_tokens()]


def revoke_join_token(store: Store, token_id: str) -> pb.JoinToken:
    if store.get_join_token(token_id) is None:
        raise NotFound(f"no join token {token_id!r}")
    store.revoke_join_token(token_id)
    row = store.get_join_token(token_id)
    assert row is not None
    return views.join_token(row)
