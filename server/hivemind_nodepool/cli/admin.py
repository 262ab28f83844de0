"""`hivemind-nodepool`: run the pool and administer it.

Admin commands act on the pool's own files with `--data-dir DIR` (safe while the server runs), or on
a running pool from anywhere with `--pool HOST:PORT` and an admin's token (`--token`, or the saved
sign-in of `hivemind login`).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from hivemind_nodepool.client import credentials
from hivemind_nodepool.pool.config import SCHEMA
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol import commandline
from hivemind_nodepool.protocol.errors import InvalidInput
from hivemind_nodepool.protocol.units import format_duration, format_size, parse_duration

log = logging.getLogger(__name__)


def _add_target(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("which pool")
    where.add_argument(
        "--data-dir",
        type=Path,
        help="the pool's data folder (local; default $HIVEMIND_POOL_DATA_DIR or ./.hivemind/pool)",
    )
    where.add_argument("--pool", metavar="HOST:PORT", help="a running pool (remote; needs an admin token)")
    where.add_argument("--token", help="an admin's API token (default: the saved sign-in)")
    where.add_argument("--ca", type=Path, help="CA certificate to trust for TLS")
    where.add_argument("--insecure", action="store_true", help="allow plaintext off loopback")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hivemind-nodepool", description="Run and administer a HiveMind pool."
    )
    commandline.add_common_options(parser, default_level="INFO")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the pool server",
        description="Run the pool: gRPC API, scheduler, worker gateway. Each setting comes from its "
        "flag, else its HIVEMIND_POOL_* variable, else the --config file's [pool] table, else the default.",
    )
    serve.add_argument("--config", type=Path, help="a TOML settings file ([pool] table)")
    SCHEMA.add_flags(serve.add_argument_group("settings"))
    serve.set_defaults(func=cmd_serve)

    user = commands.add_parser("user", help="manage user accounts").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    add = user.add_parser("add", help="create a user", description="Create a user account.")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="make the user an admin")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    _add_target(add)
    add.set_defaults(func=cmd_user_add)
    listing = user.add_parser("list", help="list users")
    listing.add_argument("--json", action="store_true")
    _add_target(listing)
    listing.set_defaults(func=cmd_user_list)
    disable = user.add_parser(
        "disable",
        help="disable a user (their tokens and open streams stop working)",
        description="Disable a user: their tokens stop working and their open streams end. Their "
        "queued and running tasks are cancelled unless you pass --keep-tasks.",
    )
    disable.add_argument("name")
    tasks = disable.add_mutually_exclusive_group()
    tasks.add_argument(
        "--cancel-tasks",
        dest="keep_tasks",
        action="store_false",
        help="cancel their queued and running tasks (the default)",
    )
    tasks.add_argument(
        "--keep-tasks", dest="keep_tasks", action="store_true", help="let their tasks run to the end"
    )
    disable.set_defaults(keep_tasks=False)
    _add_target(disable)
    disable.set_defaults(func=cmd_user_disable)

    join = commands.add_parser("join-token", help="tokens that let workers join").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    create = join.add_parser("create", help="create a join token and print it")
    create.add_argument("--expires", default="7d", metavar="DURATION", help="lifetime (default 7d)")
    _add_target(create)
    create.set_defaults(func=cmd_join_token_create)
    jlist = join.add_parser("list", help="list join tokens")
    jlist.add_argument("--json", action="store_true")
    _add_target(jlist)
    jlist.set_defaults(func=cmd_join_token_list)
    revoke = join.add_parser(
        "revoke",
        help="revoke a join token by its id",
        description="Revoke a join token: no new worker can join with it. The workers that joined "
        "with it keep working unless you pass --workers (advised when the token leaked); without "
        "either flag you are asked, when there are any and a terminal to ask on.",
    )
    revoke.add_argument("id")
    which = revoke.add_mutually_exclusive_group()
    which.add_argument(
        "--workers",
        dest="workers",
        action="store_true",
        default=None,
        help="also revoke every worker that joined with it (their running tasks are requeued)",
    )
    which.add_argument(
        "--keep-workers", dest="workers", action="store_false", help="leave its workers working"
    )
    _add_target(revoke)
    revoke.set_defaults(func=cmd_join_token_revoke)

    worker = commands.add_parser("worker", help="the workers that joined").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    wlist = worker.add_parser(
        "list", help="list workers, with the join token each joined with", description="List workers."
    )
    wlist.add_argument("--json", action="store_true")
    _add_target(wlist)
    wlist.set_defaults(func=cmd_worker_list)
    wrevoke = worker.add_parser(
        "revoke",
        help="revoke a worker: its credential stops working, its tasks are requeued",
        description="Revoke a worker by its id: its credential stops working, its open streams end "
        "and its running tasks go back to the queue without spending a retry. A worker that still "
        "holds a valid join token can join again as a new worker: revoke the token too "
        "(`join-token revoke ID --workers`).",
    )
    wrevoke.add_argument("id")
    _add_target(wrevoke)
    wrevoke.set_defaults(func=cmd_worker_revoke)
    wremove = worker.add_parser(
        "remove",
        help="forget an offline worker",
        description="Forget an offline worker (it no longer shows anywhere; its tasks' history keeps "
        "its id). An online worker, or one still holding tasks, is refused: stop it first. A worker "
        "that comes back with the same state dir and a join token joins again as a new worker.",
    )
    wremove.add_argument("id", help="the worker's id (w-...), as `status` lists it")
    _add_target(wremove)
    wremove.set_defaults(func=cmd_worker_remove)

    tls = commands.add_parser("tls", help="TLS certificates").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    init = tls.add_parser("init", help="create a lab CA and a server certificate")
    init.add_argument("--dir", type=Path, default=None, help="where to write them (default DATA_DIR/tls)")
    init.add_argument("--data-dir", type=Path, help="the pool's data folder")
    init.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name or IP clients use to reach the pool (repeat; default localhost, "
        "127.0.0.1, ::1 and this machine's name)",
    )
    init.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    init.add_argument("--force", action="store_true", help="replace existing files")
    init.set_defaults(func=cmd_tls_init)

    status = commands.add_parser("status", help="workers and tasks at a glance")
    status.add_argument("--json", action="store_true")
    _add_target(status)
    status.set_defaults(func=cmd_status)
    return parser


# -- the admin backends: the same operations on the local files or a remote pool ------------------


class Local:
    """The pool's own files: the same operations as the service's admin RPCs (pool.accounts)."""

    def __init__(self, data_dir: Path) -> None:
        # Imported here: the pool's modules (bcrypt, grpc) load only for a local admin command.
        from hivemind_nodepool.pool import accounts
        from hivemind_nodepool.pool.store import Store

        if not (data_dir / "pool.db").exists():
            raise InvalidInput(
                f"no pool data in {data_dir} (start `hivemind-nodepool serve --data-dir "
                f"{data_dir}` once, or pass the right --data-dir)"
            )
        self.data_dir = data_dir
        self.store = Store(data_dir)
        self.accounts = accounts

    def add_user(self, name: str, password: str, admin: bool) -> pb.User:
        return self.accounts.add_user(self.store, name, password, admin)

    def list_users(self) -> list[pb.User]:
        return self.accounts.list_users(self.store)

    def disable_user(self, name: str, keep_tasks: bool) -> pb.User:
        """The running pool ends the user's streams and cancels the tasks (marked here) within its
        recheck interval; a pool that is not running does it when it starts."""
        return self.accounts.disable_user(self.store, name, cancel_tasks=not keep_tasks)

    def unfinished_tasks(self, name: str) -> int | None:
        return len(self.store.unfinished_tasks_of(name))

    def create_join_token(self, ttl: float) -> pb.JoinToken:
        return self.accounts.create_join_token(self.store, "(local admin)", ttl)

    def list_join_tokens(self) -> list[pb.JoinToken]:
        return self.accounts.list_join_tokens(self.store)

    def revoke_join_token(self, token_id: str, workers: bool) -> pb.JoinToken:
        token = self.accounts.revoke_join_token(self.store, token_id)
        if workers:
            self.accounts.revoke_workers_of(self.store, token_id)
        return token

    def list_workers(self) -> list[pb.Worker]:
        """From the files: what the pool last stored (live resources come with --pool)."""
        return self.accounts.stored_workers(self.store)

    def revoke_worker(self, worker_id: str) -> pb.Worker:
        """The running pool ends its stream and requeues its tasks within its recheck interval."""
        self.accounts.revoke_worker(self.store, worker_id)
        return next(w for w in self.list_workers() if w.id == worker_id)

    def remove_worker(self, worker_id: str) -> pb.Worker:
        return self.accounts.remove_worker(self.store, worker_id)  # the row has what the pool saw

    def status(self) -> dict[str, Any]:
        workers = [
            {
                "id": r["id"],
                "name": r["name"],
                "state": pb.WorkerState.Name(r["state"]),
                "last_heartbeat_at": r["last_heartbeat_at"],
            }
            for r in self.store.list_workers()
        ]
        tasks = {pb.TaskState.Name(s): n for s, n in self.store.count_by_state().items()}  # type: ignore[arg-type]
        from hivemind_nodepool.pool.disk import free_bytes

        # Read from the files, not the server: full by the pool's rule with its default (or
        # HIVEMIND_POOL_DISK_MIN_FREE) minimum; `--pool` asks the running pool itself.
        free = free_bytes(self.data_dir)
        min_free = SCHEMA.from_environment("disk_min_free")
        if min_free is None:
            min_free = SCHEMA.settings["disk_min_free"].default
        return {
            "workers": workers,
            "tasks_by_state": tasks,
            "disk_full": free < min_free,
            "disk_free_bytes": free,
            "source": str(self.store.path),
        }


class Remote:
    def __init__(self, args: argparse.Namespace) -> None:
        from hivemind_nodepool.client.pool_client import PoolClient

        token = args.token
        ca = args.ca
        insecure = args.insecure
        if token is None:
            saved = credentials.load()
            if saved is not None and not saved.expired:
                token = saved.token
                ca = ca or saved.ca_file
                insecure = insecure or saved.insecure
        if not token:
            raise InvalidInput("--pool needs an admin's token: pass --token or sign in with `hivemind login`")
        self.client = PoolClient(args.pool, token=token, ca_file=ca, insecure=insecure)

    def add_user(self, name: str, password: str, admin: bool) -> pb.User:
        return self.client.create_user(name, password, admin)

    def list_users(self) -> list[pb.User]:
        return self.client.list_users()

    def disable_user(self, name: str, keep_tasks: bool) -> pb.User:
        return self.client.disable_user(name, keep_tasks=keep_tasks)

    def unfinished_tasks(self, name: str) -> int | None:
        return None  # the pool does not count them for us; it has cancelled them already

    def create_join_token(self, ttl: float) -> pb.JoinToken:
        return self.client.create_join_token(int(ttl))

    def list_join_tokens(self) -> list[pb.JoinToken]:
        return self.client.list_join_tokens()

    def revoke_join_token(self, token_id: str, workers: bool) -> pb.JoinToken:
        return self.client.revoke_join_token(token_id, workers=workers)

    def list_workers(self) -> list[pb.Worker]:
        return self.client.list_workers()

    def revoke_worker(self, worker_id: str) -> pb.Worker:
        return self.client.revoke_worker(worker_id)

    def remove_worker(self, worker_id: str) -> pb.Worker:
        return self.client.remove_worker(worker_id)

    def status(self) -> dict[str, Any]:
        status = self.client.pool_status()
        workers = [
            {
                "id": w.id,
                "name": w.name,
                "state": pb.WorkerState.Name(w.state),
                "last_heartbeat_at": w.last_heartbeat_at,
                "capacity": {
                    "cpus": w.capacity.cpus,
                    "memory_bytes": w.capacity.memory_bytes,
                    "gpus": w.capacity.gpus,
                },
                "allocated": {
                    "cpus": w.allocated.cpus,
                    "memory_bytes": w.allocated.memory_bytes,
                    "gpus": w.allocated.gpus,
                },
                "running": list(w.running_task_ids),
            }
            for w in self.client.list_workers()
        ]
        return {
            "workers": workers,
            "tasks_by_state": dict(status.tasks_by_state),
            "disk_full": status.disk_full,
            "disk_free_bytes": status.disk_free_bytes,
            "version": status.version,
            "source": args_pool(self.client.address),
        }


def args_pool(address: str) -> str:
    return f"pool at {address}"


def _backend(args: argparse.Namespace) -> Local | Remote:
    if args.pool:
        if args.data_dir:
            raise InvalidInput("give --data-dir or --pool, not both")
        return Remote(args)
    from hivemind_nodepool.pool.config import default_data_dir

    return Local(args.data_dir or default_data_dir())


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise InvalidInput("pass --password-stdin to read the password from a pipe")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise InvalidInput("the passwords differ")
    return first


def _when(ts: float) -> str:
    if not ts:
        return "never"
    delta = ts - time.time()
    return ("in " + format_duration(delta)) if delta >= 0 else (format_duration(-delta) + " ago")


# -- commands -------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from hivemind_nodepool.pool.config import load_settings
    from hivemind_nodepool.pool.server import serve

    settings = load_settings(args.config, SCHEMA.flag_values(args))
    asyncio.run(serve(settings))
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    password = _read_password(args.password_stdin)
    created = _backend(args).add_user(args.name, password, args.admin)
    print(f"created user {created.name}" + (" (admin)" if created.admin else ""))
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    users = _backend(args).list_users()
    if args.json:
        print(
            json.dumps(
                [
                    {"name": u.name, "admin": u.admin, "disabled": u.disabled, "created_at": u.created_at}
                    for u in users
                ],
                indent=2,
            )
        )
    else:
        for u in users:
            flags = ", ".join(f for f, on in (("admin", u.admin), ("disabled", u.disabled)) if on)
            print(f"{u.name}" + (f"  ({flags})" if flags else ""))
    return 0


def cmd_user_disable(args: argparse.Namespace) -> int:
    backend = _backend(args)
    pending = None if args.keep_tasks else backend.unfinished_tasks(args.name)
    user = backend.disable_user(args.name, keep_tasks=args.keep_tasks)
    print(f"disabled user {user.name}; their tokens no longer work and their open streams end")
    if args.keep_tasks:
        print("their queued and running tasks are kept (--keep-tasks)")
    elif pending is None:
        print("their queued and running tasks were cancelled")
    else:  # local: the running pool does it within seconds, or when it next starts
        print(f"their {pending} queued and running task(s) are being cancelled by the pool")
    return 0


def cmd_join_token_create(args: argparse.Namespace) -> int:
    backend = _backend(args)
    ttl = parse_duration(args.expires)
    if ttl <= 0:
        raise InvalidInput("--expires must be positive")
    token = backend.create_join_token(ttl)
    print(token.token)
    print(
        f"(id {token.id}, expires {_when(token.expires_at)}; give it to `hivemind-worker run --join-token`)",
        file=sys.stderr,
    )
    return 0


def cmd_join_token_list(args: argparse.Namespace) -> int:
    tokens = _backend(args).list_join_tokens()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": t.id,
                        "created_at": t.created_at,
                        "expires_at": t.expires_at,
                        "revoked": t.revoked,
                        "created_by": t.created_by,
                    }
                    for t in tokens
                ],
                indent=2,
            )
        )
    else:
        for t in tokens:
            state = "revoked" if t.revoked else ("expired" if t.expires_at < time.time() else "valid")
            print(f"{t.id}  {state:8s} expires {_when(t.expires_at)}  by {t.created_by}")
    return 0


def cmd_join_token_revoke(args: argparse.Namespace) -> int:
    backend = _backend(args)
    joined = [
        w for w in backend.list_workers() if w.join_token_id == args.id and w.state != pb.WORKER_REVOKED
    ]
    workers = args.workers
    if workers is None and joined and sys.stdin.isatty():
        names = ", ".join(f"{w.name} ({w.id})" for w in joined)
        answer = input(f"{len(joined)} worker(s) joined with {args.id}: {names}. Revoke them too? [y/N] ")
        workers = answer.strip().lower() in ("y", "yes")
    revoked = backend.revoke_join_token(args.id, workers=bool(workers))
    print(f"revoked join token {revoked.id}; no new worker can join with it")
    if workers and joined:
        print(f"revoked its {len(joined)} worker(s): " + ", ".join(w.id for w in joined))
    elif joined:
        print(
            f"its {len(joined)} worker(s) keep working: "
            + ", ".join(w.id for w in joined)
            + f"; revoke them with `join-token revoke {args.id} --workers` or `worker revoke ID`",
            file=sys.stderr,
        )
    return 0


def cmd_worker_list(args: argparse.Namespace) -> int:
    workers = _backend(args).list_workers()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": w.id,
                        "name": w.name,
                        "state": pb.WorkerState.Name(w.state),
                        "join_token_id": w.join_token_id,
                        "registered_at": w.registered_at,
                        "last_heartbeat_at": w.last_heartbeat_at,
                        "revoked_at": w.revoked_at,
                        "running_count": w.running_count,
                        "python_versions": list(w.facts.python_versions),
                        "images": list(w.facts.images),
                        "env_cache": {
                            "environments": w.env_cache.environments,
                            "size_bytes": w.env_cache.size_bytes,
                            "hits": w.env_cache.hits,
                            "builds": w.env_cache.builds,
                            "failures": w.env_cache.failures,
                        },
                    }
                    for w in workers
                ],
                indent=2,
            )
        )
        return 0
    if not workers:
        print("no workers have joined")
        return 0
    print(
        f"{'ID':<16} {'NAME':<20} {'STATE':<9} {'JOIN TOKEN':<12} {'JOINED':<14} {'HEARTBEAT':<14} "
        f"{'TASKS':<5} {'PYTHON':<9} ENVIRONMENTS"
    )
    for w in workers:
        state = pb.WorkerState.Name(w.state).removeprefix("WORKER_").lower()
        print(
            f"{w.id:<16} {w.name[:20]:<20} {state:<9} {w.join_token_id:<12} "
            f"{_when(w.registered_at):<14} {_when(w.last_heartbeat_at):<14} {w.running_count:<5} "
            f"{','.join(w.facts.python_versions) or '-':<9} {env_cache_line(w.env_cache)}"
        )
    return 0


def env_cache_line(stats: pb.EnvironmentCacheStats) -> str:
    """'3 (1.2 GiB), 80% hits' from a worker's cache stats; '-' before its first report."""
    asked = stats.hits + stats.builds + stats.failures
    if not asked and not stats.environments:
        return "-"
    rate = f", {100 * stats.hits / asked:.0f}% hits" if asked else ""
    return f"{stats.environments} ({format_size(stats.size_bytes)}){rate}"


def cmd_worker_revoke(args: argparse.Namespace) -> int:
    worker = _backend(args).revoke_worker(args.id)
    print(f"revoked worker {worker.id} ({worker.name}); its running tasks go back to the queue")
    return 0


def cmd_worker_remove(args: argparse.Namespace) -> int:
    removed = _backend(args).remove_worker(args.id)
    state = pb.WorkerState.Name(removed.state).removeprefix("WORKER_").lower()
    print(f"removed worker {removed.id} ({removed.name}, {state})")
    return 0


def cmd_tls_init(args: argparse.Namespace) -> int:
    from hivemind_nodepool.pool.config import default_data_dir
    from hivemind_nodepool.pool.tls import default_hosts, init

    directory = args.dir or (args.data_dir or default_data_dir()) / "tls"
    files = init(directory, args.host or default_hosts(), days=args.days, force=args.force)
    print(f"CA certificate (give it to clients, --ca): {files.ca_cert}")
    print(f"server certificate: {files.server_cert}")
    print(f"server key:         {files.server_key}")
    print(f"serve with: hivemind-nodepool serve --tls-cert {files.server_cert} --tls-key {files.server_key}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    report = _backend(args).status()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"HiveMind pool ({report['source']})")
    if report["disk_full"]:
        print(
            "DEGRADED: the pool's disk is full: new tasks, results and live events are refused "
            "until space is freed (reads, watches and cancels still work)"
        )
    print(f"disk: {format_size(report['disk_free_bytes'])} free")
    workers = report["workers"]
    print(f"workers: {sum(1 for w in workers if w['state'] == 'WORKER_ONLINE')} online of {len(workers)}")
    for w in workers:
        line = f"  {w['id']}  {w['name']:20s} {w['state'].removeprefix('WORKER_').lower():9s}"
        if "capacity" in w:
            cap, used = w["capacity"], w["allocated"]
            line += (
                f" cpus {used['cpus']:g}/{cap['cpus']:g}  memory {format_size(used['memory_bytes'])}/"
                f"{format_size(cap['memory_bytes'])}  gpus {used['gpus']}/{cap['gpus']}"
            )
        line += f"  heartbeat {_when(w['last_heartbeat_at'])}"
        print(line)
    tasks = report["tasks_by_state"]
    print("tasks: " + (", ".join(f"{name.lower()} {n}" for name, n in sorted(tasks.items())) or "none"))
    return 0


def main(argv: list[str] | None = None) -> int:
    return commandline.main(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
