"""User accounts, join tokens, workers' credentials and removing workers: the one implementation
behind both the NodePool service's admin RPCs and `hivemind-nodepool user|join-token|worker
--data-dir` (which acts on the pool's files directly). What a change means for the running pool
(open streams, tasks, a worker's stream) is `revocation.Revocations`: the service calls it at once,
and the pool's periodic recheck finds changes made on the files.

Each function takes the Store and answers the wire message; errors are HiveMindErrors. Permission
checks (who may call) stay with the caller: the service checks the principal, the local CLI is run
by whoever may read the pool's files.
"""

from __future__ import annotations

import secrets
import sqlite3
import time

from hivemind_nodepool.pool import auth, views
from hivemind_nodepool.pool.fleet import Fleet, WorkerEntry
from hivemind_nodepool.pool.store import Store
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from hivemind_nodepool.protocol.states import ON_WORKER_STATES


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


def disable_user(store: Store, name: str, by: str | None = None, cancel_tasks: bool = True) -> pb.User:
    """Disable an account; its tokens stop working at once. by is the admin asking, who may not
    disable their own account (None: the pool's operator, acting on its files). With cancel_tasks
    its queued and running tasks are marked for the pool to cancel."""
    if by is not None and name == by:
        raise InvalidInput("you cannot disable your own account")
    if store.get_user(name) is None:
        raise NotFound(f"no user {name!r}")
    store.set_user_disabled(name, True, cancel_tasks=cancel_tasks)
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


def revoke_workers_of(store: Store, token_id: str) -> list[str]:
    """Revoke every worker that joined with the join token; returns those newly revoked."""
    revoked = [row["id"] for row in store.workers_of_join_token(token_id) if not row["revoked_at"]]
    for worker_id in revoked:
        store.revoke_worker(worker_id)
    return revoked


def revoke_worker(store: Store, worker_id: str) -> None:
    """The worker's credential stops working for every call."""
    row = store.get_worker(worker_id) if worker_id else None
    if row is None:
        raise NotFound(f"no worker {worker_id!r}")
    if row["revoked_at"]:
        raise Conflict(f"worker {worker_id} was revoked already")
    store.revoke_worker(worker_id)


def stored_workers(store: Store) -> list[pb.Worker]:
    """Every worker as the pool last stored it, with the join token it registered with (the live
    view, with resources in use, is ListWorkers')."""
    running: dict[str, int] = {}
    for task in store.tasks_in_states(ON_WORKER_STATES):
        running[task["worker_id"]] = running.get(task["worker_id"], 0) + 1
    return [
        pb.Worker(
            id=row["id"],
            name=row["name"],
            state=pb.WORKER_REVOKED if row["revoked_at"] else row["state"],
            facts=pb.MachineFacts.FromString(row["facts"]),
            last_heartbeat_at=row["last_heartbeat_at"],
            registered_at=row["registered_at"],
            running_count=running.get(row["id"], 0),
            join_token_id=row["join_token_id"],
            revoked_at=row["revoked_at"],
        )
        for row in store.list_workers()
    ]


def remove_worker(store: Store, worker_id: str, fleet: Fleet | None = None) -> pb.Worker:
    """Forget an offline worker that holds no task; returns it as it was. Refused (Conflict) while
    it is online, since it would only register again, and while it holds a task, which must first
    go back to the queue. With the running pool's fleet its live state decides; on the pool's files
    alone, the state the pool last stored."""
    row = store.get_worker(worker_id) if worker_id else None
    if row is None:
        raise NotFound(f"no worker {worker_id!r}")
    entry = (fleet.get(row["id"]) if fleet is not None else None) or WorkerEntry.from_row(row)
    who = f"worker {row['name']} ({row['id']})"
    if entry.connected or entry.present:
        raise Conflict(
            f"{who} is online; only offline workers can be removed: stop it first "
            "(SIGTERM drains it) and remove it once it shows offline"
        )
    held = [r for r in store.tasks_in_states(ON_WORKER_STATES) if r["worker_id"] == row["id"]]
    if held:
        raise Conflict(
            f"{who} still holds {len(held)} task(s), which go back to the queue once it is declared "
            "lost (after the heartbeat timeout); remove it after that"
        )
    removed = views.worker(entry, row)
    store.remove_worker(row["id"])
    if fleet is not None:
        fleet.workers.pop(row["id"], None)
    return removed
