"""`hivemind`: the command line of a pool's users (sign in, submit, follow, fetch)."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from hivemind_nodepool.cli.output import print_event, print_task, print_tasks, print_workers
from hivemind_nodepool.client import credentials
from hivemind_nodepool.client.environment import EnvironmentChoice
from hivemind_nodepool.client.pool_client import PoolClient
from hivemind_nodepool.client.submission import (
    TaskRequest,
    folder_requirements,
    package_path,
    parse_assignment,
    parse_labels,
    read_requirements,
)
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol import commandline
from hivemind_nodepool.protocol.bundle import (
    Unpacked,
    describe_renames,
    extract_new_folder,
    left_out_notice,
    worker_renames,
)
from hivemind_nodepool.protocol.errors import HiveMindError, InvalidInput
from hivemind_nodepool.protocol.jsonify import to_dict
from hivemind_nodepool.protocol.result_notebook import name_result_notebook
from hivemind_nodepool.protocol.states import state_name
from hivemind_nodepool.protocol.units import format_size

log = logging.getLogger(__name__)


def _client() -> PoolClient:
    return PoolClient.from_saved_credential()


def cmd_login(args: argparse.Namespace) -> int:
    password = (
        sys.stdin.readline().rstrip("\n")
        if args.password_stdin
        else getpass.getpass(f"Password for {args.user} at {args.pool}: ")
    )
    with PoolClient(args.pool, ca_file=args.ca, insecure=args.insecure) as client:
        answer = client.login(args.user, password)
    path = credentials.save(
        credentials.Credential(
            pool=args.pool,
            user=answer.user.name,
            token=answer.token,
            expires_at=answer.expires_at,
            ca_file=str(Path(args.ca).resolve()) if args.ca else None,
            insecure=args.insecure,
        )
    )
    role = " (admin)" if answer.user.admin else ""
    print(f"signed in to {args.pool} as {answer.user.name}{role}; credential saved in {path}")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    saved = credentials.load()
    if saved is None:
        print("not signed in")
        return 0
    try:
        with _client() as client:
            client.logout()
    except HiveMindError as exc:
        log.warning("the pool did not confirm the sign-out (%s); the local credential is removed", exc)
    credentials.clear()
    print(f"signed out of {saved.pool}")
    return 0


def cmd_whoami(args: argparse.Namespace) -> int:
    with _client() as client:
        user = client.whoami()
    print(f"{user.name}{' (admin)' if user.admin else ''} at {client.address}")
    return 0


def _request(args: argparse.Namespace) -> TaskRequest:
    return TaskRequest(
        cpus=args.cpus,
        memory=args.memory,
        gpus=args.gpus,
        disk=args.disk or 0,
        parameters=dict(parse_assignment(item) for item in args.parameter or []),
        timeout=args.timeout,
        max_retries=args.retries,
        name=args.name or "",
        labels=parse_labels(args.label),
        priority=args.priority,
    )


def _follow(client: PoolClient, task_id: str, after: int = 0) -> pb.Task:
    for event in client.watch(task_id, after_seq=after, follow=True):
        print_event(event)
    return client.get_task(task_id)


def _environment(args: argparse.Namespace) -> EnvironmentChoice:
    """--env, --requirements, --image, --python; with none of the first three, the folder's own
    requirements.txt when it has one, else the packages captured from this Python (--env auto)."""
    requirements = read_requirements(args.requirements) if args.requirements else None
    if args.env is None and requirements is None and args.image is None:
        requirements = folder_requirements(args.path)
    return EnvironmentChoice.from_options(args.env, requirements, args.image, args.python)


def cmd_submit(args: argparse.Namespace) -> int:
    request = _request(args)
    environment = _environment(args)
    with tempfile.TemporaryDirectory(prefix="hivemind-submit-") as workdir:
        manifest, packed = package_path(
            args.path, request, entry=args.entry, workdir=workdir, environment=environment
        )
        print(
            f"packaged {packed.files} files ({format_size(packed.unpacked_bytes)}, "
            f"{format_size(packed.packed_bytes)} zipped)",
            file=sys.stderr,
        )
        for line in packed.notices:
            print(f"hivemind: {line}", file=sys.stderr)
        if packed.left_out:
            print(f"hivemind: {left_out_notice(packed.left_out)}", file=sys.stderr)
        with _client() as client:
            task = client.submit(manifest, packed.path, on_progress=_upload_progress(packed.packed_bytes))
            print(task.id)
            if not args.wait:
                return 0
            final = _follow(client, task.id)
    print_task(final, out=sys.stderr)
    return 0 if final.state == pb.SUCCEEDED else 1


def _upload_progress(total: int) -> Callable[[int], None] | None:
    """A progress line on stderr for uploads big enough to notice."""
    if total < 8 * 1024 * 1024 or not sys.stderr.isatty():
        return None

    def show(sent: int) -> None:
        done = int(30 * sent / total)
        sys.stderr.write(f"\ruploading [{'#' * done}{'.' * (30 - done)}] {format_size(sent)}")
        if sent >= total:
            sys.stderr.write("\n")

    return show


def cmd_tasks(args: argparse.Namespace) -> int:
    states = [pb.TaskState.Value(s.upper()) for s in args.state or []]
    with _client() as client:
        page = client.list_tasks(states, page_size=args.limit, all_users=args.all)
    if args.json:
        print(json.dumps([to_dict(task) for task in page.tasks], indent=2))
    else:
        print_tasks(list(page.tasks))
        if page.total > len(page.tasks):
            print(f"({len(page.tasks)} of {page.total} shown; use --limit)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _client() as client:
        task = client.get_task(args.task_id)
    if args.json:
        print(json.dumps(to_dict(task), indent=2))
    else:
        print_task(task)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    with _client() as client:
        for event in client.watch(args.task_id, follow=args.follow):
            print_event(event)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client() as client:
        task = client.cancel_task(args.task_id)
    print(f"{task.id}: {state_name(task.state)}")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    with _client() as client:
        task = client.retry_task(args.task_id)
    print(task.id)
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    target = Path(args.to)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InvalidInput(f"{target} exists and is not empty; choose a new folder with --to")
    notebook: str | None = None

    def name_notebook(folder: Path, unpacked: Unpacked) -> None:
        nonlocal notebook
        # the executed notebook named after the task, so two fetched results open as different tabs
        entry = task.manifest.entry_notebook
        entry = {**unpacked.renamed, **worker_renames(folder)}.get(entry, entry)
        notebook = name_result_notebook(folder, entry, task.manifest.name, task.id)

    with _client() as client, tempfile.TemporaryDirectory(prefix="hivemind-fetch-") as tmp:
        task = client.get_task(args.task_id)
        archive = client.fetch_result(args.task_id, Path(tmp) / "result.zip")
        unpacked = extract_new_folder(archive, target, prepare=name_notebook)
    print(f"result of {args.task_id} unpacked into {target} ({format_size(unpacked.bytes_written)})")
    if notebook:
        print(f"executed notebook: {target / notebook}")
    renamed = {**unpacked.renamed, **worker_renames(target)}
    if renamed:
        print(
            f"{len(renamed)} name(s) could not be kept as the task wrote them and were renamed:\n"
            + describe_renames(renamed, limit=50)
        )
    return 0


def cmd_workers(args: argparse.Namespace) -> int:
    with _client() as client:
        workers = client.list_workers()
    if args.json:
        print(json.dumps([to_dict(worker) for worker in workers], indent=2))
    else:
        print_workers(workers)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from hivemind_nodepool.cli.up import run_up

    return run_up(args)


def _environment_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--env",
        metavar="MODE",
        help="the packages: auto (what the notebook imports, pinned as installed in this Python), "
        "freeze (every package of this Python), none (the bare runtime), requirements, image "
        "(default: the folder's requirements.txt if it has one, else auto)",
    )
    sub.add_argument("--requirements", metavar="FILE", help="install this requirements file instead")
    sub.add_argument("--image", metavar="NAME", help="run in this image (one the worker's admin allows)")
    sub.add_argument("--python", metavar="X.Y", help="run only on a worker with this Python version")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hivemind", description="Use a HiveMind pool: sign in, submit notebooks, follow and fetch them."
    )
    commandline.add_common_options(parser, default_level="WARNING")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: commandline.Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(func=handler)
        return sub

    sub = add("login", cmd_login, "sign in to a pool and keep the credential (0600) for later commands")
    sub.add_argument("--pool", required=True, help="HOST:PORT of the pool, e.g. localhost:50051")
    sub.add_argument("--user", required=True, help="your user name on the pool")
    sub.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    sub.add_argument("--ca", help="the lab's CA certificate (PEM) for a TLS pool")
    sub.add_argument("--insecure", action="store_true", help="allow plaintext to a non-loopback pool")

    add("logout", cmd_logout, "revoke the saved token and forget it")
    add("whoami", cmd_whoami, "show who is signed in, and where")

    sub = add("submit", cmd_submit, "run a notebook (with its folder) or a folder on the pool")
    sub.add_argument("path", help="a notebook (.ipynb) or a folder")
    sub.add_argument("--entry", help="the notebook to run when PATH is a folder with several")
    sub.add_argument("--cpus", type=float, default=1.0, help="CPU cores (default 1)")
    sub.add_argument("--memory", default="2G", help="memory, e.g. 512M or 8G (default 2G)")
    sub.add_argument("--gpus", type=int, default=0, help="GPUs (default 0)")
    sub.add_argument(
        "--disk",
        metavar="SIZE",
        help="disk for the task's files, outputs and /tmp, e.g. 20G (default: the worker's limit)",
    )
    sub.add_argument(
        "-p",
        "--parameter",
        action="append",
        metavar="NAME=VALUE",
        help="a papermill parameter; VALUE is JSON or a string (repeatable)",
    )
    sub.add_argument(
        "--label",
        action="append",
        metavar="KEY=VALUE",
        help="only run on workers carrying this label (repeatable)",
    )
    sub.add_argument("--timeout", help="stop the task after this long, e.g. 30m or 2h")
    sub.add_argument("--retries", type=int, default=-1, help="retries after a lost worker (default: pool's)")
    sub.add_argument("--priority", type=int, default=0, help="higher runs first among your own tasks")
    sub.add_argument("--name", help="a name to show (default: the notebook's)")
    _environment_options(sub)
    sub.add_argument(
        "--wait", action="store_true", help="follow the task's output; exit 0 only if it SUCCEEDED"
    )

    sub = add("tasks", cmd_tasks, "list your tasks, newest first")
    sub.add_argument("--state", action="append", help="only tasks in this state (repeatable)")
    sub.add_argument("--all", action="store_true", help="every user's tasks (admins)")
    sub.add_argument("--limit", type=int, default=50, help="how many to show (default 50)")
    sub.add_argument("--json", action="store_true", help="print JSON")

    sub = add("show", cmd_show, "show one task with its timeline")
    sub.add_argument("task_id")
    sub.add_argument("--json", action="store_true", help="print JSON")

    sub = add("logs", cmd_logs, "print a task's output")
    sub.add_argument("task_id")
    sub.add_argument("-f", "--follow", action="store_true", help="keep following until the task ends")

    sub = add("cancel", cmd_cancel, "cancel a task")
    sub.add_argument("task_id")
    sub = add("retry", cmd_retry, "run a finished task again (a new task, same bundle)")
    sub.add_argument("task_id")

    sub = add("fetch", cmd_fetch, "download a task's result (executed notebook, outputs/) into a folder")
    sub.add_argument("task_id")
    sub.add_argument("--to", required=True, help="an empty or new folder")

    sub = add("workers", cmd_workers, "list the pool's workers with their free and total resources")
    sub.add_argument("--json", action="store_true", help="print JSON")

    sub = add("up", cmd_up, "start a pool, a worker and JupyterLab on this machine, for a first try")
    sub.add_argument("--data-dir", default=".hivemind", help="where the local pool keeps its state")
    sub.add_argument("--port", type=int, default=50051, help="the local pool's port (0: any free one)")
    sub.add_argument(
        "--executor",
        choices=["auto", "docker", "local"],
        default="auto",
        help="how the local worker runs tasks (auto: Docker when the engine answers)",
    )
    sub.add_argument("--no-lab", action="store_true", help="do not start JupyterLab")
    sub.add_argument(
        "--lab-port", type=int, help="JupyterLab's port (default: its own choice, 8888 or the next free)"
    )
    sub.add_argument(
        "--run",
        metavar="NOTEBOOK",
        help="execute this notebook headlessly against the local pool, print what came "
        "back, and stop everything",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return commandline.main(build_parser(), argv, log_format="%(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    sys.exit(main())
