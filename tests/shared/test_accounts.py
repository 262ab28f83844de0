"""pool.accounts, in process: the one implementation of user and join-token administration that
both the service and `hivemind-nodepool --data-dir` call."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hivemind_nodepool.pool import accounts, auth
from hivemind_nodepool.pool.store import Store
from hivemind_nodepool.protocol.errors import AlreadyExists, InvalidInput, NotFound


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path)
    yield opened
    opened.close()


def test_users(store: Store) -> None:
    created = accounts.add_user(store, "ada", "correct horse", admin=True)
    assert (created.name, created.admin, created.disabled) == ("ada", True, False)
    with pytest.raises(AlreadyExists):
        accounts.add_user(store, "ada", "another password", admin=False)
    with pytest.raises(InvalidInput):
        accounts.add_user(store, "no spaces", "correct horse", admin=False)
    with pytest.raises(InvalidInput, match="too short"):
        accounts.add_user(store, "bob", "short", admin=False)
    assert [u.name for u in accounts.list_users(store)] == ["ada"]
    with pytest.raises(InvalidInput, match="your own account"):
        accounts.disable_user(store, "ada", by="ada")
    assert accounts.disable_user(store, "ada").disabled  # the operator, on the pool's files
    with pytest.raises(NotFound):
        accounts.disable_user(store, "nobody")


def test_join_tokens(store: Store) -> None:
    token = accounts.create_join_token(store, "(local admin)", ttl=3600)
    assert token.token.startswith("hmj_") and token.id.startswith("jt-")
    assert token.expires_at == pytest.approx(time.time() + 3600, abs=5)
    stored = store.get_join_token_by_hash(auth.hash_secret(token.token))
    assert stored is not None and stored["id"] == token.id
    listed = accounts.list_join_tokens(store)
    assert [(t.id, t.token, t.created_by) for t in listed] == [(token.id, "", "(local admin)")]
    assert accounts.revoke_join_token(store, token.id).revoked
    with pytest.raises(NotFound):
        accounts.revoke_join_token(store, "jt-none")
