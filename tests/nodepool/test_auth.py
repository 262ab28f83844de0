"""Who may do what: the auth matrix, tokens, join tokens, the login rate limit."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from harness import FakeWorker, PoolProcess

from hivemind_nodepool.client import PoolClient
from hivemind_nodepool.pool.auth import SOURCE_FAILURES
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
)

from .helpers import submit


def test_anonymous_calls_are_refused(pool: PoolProcess) -> None:
    anonymous = pool.client()
    for call in (
        anonymous.whoami,
        anonymous.list_workers,
        anonymous.pool_status,
        anonymous.list_users,
        lambda: anonymous.get_task("t-1"),
        lambda: anonymous.list_tasks(),
        lambda: anonymous.cancel_task("t-1"),
        lambda: list(anonymous.watch("t-1", follow=False)),
        lambda: anonymous.create_join_token(),
    ):
        with pytest.raises(Unauthenticated):
            call()
    with pytest.raises(Unauthenticated):
        submit(anonymous)
    garbage = pool.client(token="hmu_not-a-real-token")
    with pytest.raises(Unauthenticated):
        garbage.whoami()


def test_login_wrong_password_and_unknown_user(pool: PoolProcess) -> None:
    pool.add_user("alice", "alice-password")
    client = pool.client()
    with pytest.raises(Unauthenticated) as wrong:
        client.login("alice", "wrong-password")
    with pytest.raises(Unauthenticated) as unknown:
        client.login("nobody", "wrong-password")
    assert str(wrong.value) == str(unknown.value)  # the answer does not reveal which names exist
    answer = client.login("alice", "alice-password")
    assert answer.token.startswith("hmu_") and len(answer.token) > 40
    assert answer.expires_at > time.time() + 29 * 86400
    assert client.whoami().name == "alice"


def test_tokens_expire_and_logout_revokes(pool: PoolProcess) -> None:
    pool.add_user("alice", "alice-password")
    short = pool.client()
    short.login("alice", "alice-password", ttl_seconds=1)
    assert short.whoami().name == "alice"
    time.sleep(1.2)
    with pytest.raises(Unauthenticated, match="expired"):
        short.whoami()
    client = pool.login("alice", "alice-password")
    token = client.token
    client.logout()
    with pytest.raises(Unauthenticated, match="revoked"):
        pool.client(token=token).whoami()


def test_tokens_are_stored_hashed(pool: PoolProcess) -> None:
    pool.add_user("alice", "alice-password")
    client = pool.login("alice", "alice-password")
    assert client.token
    raw = (pool.data_dir / "pool.db").read_bytes()
    wal = pool.data_dir / "pool.db-wal"
    raw += wal.read_bytes() if wal.exists() else b""
    assert client.token.encode() not in raw
    assert b"alice-password" not in raw


def test_users_see_only_their_own_tasks(pool: PoolProcess, tmp_path: Path) -> None:
    admin = pool.admin()
    pool.add_user("alice", "alice-password")
    pool.add_user("bob", "bob-password1")
    alice = pool.login("alice", "alice-password")
    bob = pool.login("bob", "bob-password1")
    task = submit(alice)
    unknown = "t-" + "0" * 12  # the same shape as a real id
    for call in (
        bob.get_task,
        bob.cancel_task,
        bob.retry_task,
        lambda t: list(bob.watch(t, follow=False)),
        lambda t: list(bob.watch(t, follow=True)),
        lambda t: bob.fetch_result(t, tmp_path / "never.zip"),
    ):
        # Another user's task answers exactly as an id nobody has, so ids cannot be probed.
        with pytest.raises(NotFound) as theirs:
            call(task.id)
        with pytest.raises(NotFound) as nobodys:
            call(unknown)
        assert theirs.value.code == nobodys.value.code == grpc.StatusCode.NOT_FOUND
        assert str(theirs.value).replace(task.id, unknown) == str(nobodys.value)
        assert task.id in str(theirs.value)  # the caller's own input, nothing more
    assert bob.list_tasks().total == 0
    with pytest.raises(PermissionDenied):
        bob.list_tasks(all_users=True)
    assert alice.list_tasks().total == 1
    assert admin.get_task(task.id).owner == "alice"
    assert admin.list_tasks(all_users=True).total == 1
    with pytest.raises(NotFound):
        alice.get_task("t-doesnotexist")
    admin.cancel_task(task.id)
    with pytest.raises(Conflict):
        alice.cancel_task(task.id)


def test_non_admins_cannot_call_admin_rpcs(pool: PoolProcess) -> None:
    pool.add_user("alice", "alice-password")
    alice = pool.login("alice", "alice-password")
    for call in (
        lambda: alice.create_user("eve", "eve-password"),
        alice.list_users,
        lambda: alice.disable_user("alice"),
        alice.create_join_token,
        alice.list_join_tokens,
        lambda: alice.revoke_join_token("jt-x"),
        lambda: alice.drain_worker("w-x"),
        lambda: alice.revoke_worker("w-x"),
    ):
        with pytest.raises(PermissionDenied):
            call()


def test_admin_user_management_over_rpc(pool: PoolProcess) -> None:
    admin = pool.admin()
    created = admin.create_user("carol", "carol-password")
    assert created.name == "carol" and not created.admin
    with pytest.raises(Exception, match="already exists"):
        admin.create_user("carol", "carol-password")
    with pytest.raises(InvalidInput):
        admin.create_user("bad name!", "carol-password")
    with pytest.raises(InvalidInput):
        admin.create_user("dave", "short")
    carol = pool.login("carol", "carol-password")
    assert {u.name for u in admin.list_users()} == {"admin", "carol"}
    admin.disable_user("carol")
    with pytest.raises(Unauthenticated):
        carol.whoami()  # her token stops working at once
    with pytest.raises(Unauthenticated):
        pool.login("carol", "carol-password")
    with pytest.raises(InvalidInput):
        admin.disable_user("admin")


def test_worker_credentials_and_join_tokens(pool: PoolProcess) -> None:
    admin = pool.admin()
    token = admin.create_join_token(ttl_seconds=3600)
    assert token.token.startswith("hmj_")
    worker = FakeWorker(pool.address, token.token, name="w1")
    try:
        # A worker credential cannot act as a user, and a user token cannot act as a worker.
        with pytest.raises(PermissionDenied):
            worker.client.list_tasks()
        with pytest.raises(Unauthenticated):
            admin.report_status(pb.StatusReport(task_id="t-1", attempt=1, state=pb.RUNNING))
        listed = admin.list_join_tokens()
        assert [t.id for t in listed] == [token.id] and not listed[0].token  # the secret is never listed
        admin.revoke_join_token(token.id)
        with pytest.raises(Unauthenticated, match="revoked"):
            FakeWorker(pool.address, token.token, name="w2")
        with pytest.raises(Unauthenticated):
            FakeWorker(pool.address, "hmj_made-up", name="w3")
        with pytest.raises(NotFound):
            admin.revoke_join_token("jt-nothere")
    finally:
        worker.close()


def test_expired_join_token(pool: PoolProcess) -> None:
    admin = pool.admin()
    token = admin.create_join_token(ttl_seconds=1)
    time.sleep(1.2)
    with pytest.raises(Unauthenticated, match="expired"):
        FakeWorker(pool.address, token.token)


def test_login_rate_limit(pool: PoolProcess) -> None:
    pool.add_user("alice", "alice-password")
    pool.add_user("bob", "bob-password1")
    client = PoolClient(pool.address)
    for _ in range(5):
        with pytest.raises(Unauthenticated):
            client.login("alice", "guess-guess")
    with pytest.raises(RateLimited, match="too many"):
        client.login("alice", "alice-password")  # even the right password, for a while
    assert pool.client().login("bob", "bob-password1").user.name == "bob"  # other names unaffected


def test_login_rate_limit_survives_a_restart(pool: PoolProcess) -> None:
    pool.add_user("alice", "alice-password")
    client = PoolClient(pool.address)
    for _ in range(5):
        with pytest.raises(Unauthenticated):
            client.login("alice", "guess-guess")
    client.close()
    pool.restart(hard=True)  # even after kill -9: each failure was stored as it happened
    client = PoolClient(pool.address)
    try:
        with pytest.raises(RateLimited, match="too many"):
            client.login("alice", "alice-password")
    finally:
        client.close()


def test_login_rate_limit_per_source(pool: PoolProcess) -> None:
    """Guessing a different name each time is throttled too: the limit also counts per source."""
    pool.add_user("alice", "alice-password")
    client = PoolClient(pool.address)
    outcomes = []
    for index in range(12):
        try:
            client.login(f"name{index}", "guess-guess")
        except Unauthenticated:
            outcomes.append("refused")
        except RateLimited as exc:
            assert "your address" in str(exc)
            outcomes.append("throttled")
    assert "throttled" in outcomes, outcomes
    first = outcomes.index("throttled")
    assert first <= SOURCE_FAILURES and set(outcomes[first:]) == {"throttled"}, outcomes
    with pytest.raises(RateLimited, match="your address"):
        client.login("alice", "alice-password")  # a good account does not reopen the source
    client.close()
    pool.restart(hard=True)  # stored as they happened: a restart does not reset the source
    with PoolClient(pool.address) as again, pytest.raises(RateLimited, match="your address"):
        again.login("alice", "alice-password")
