"""`%%hivemind` (run a cell on the pool) and `%hivemind` (login, status, tasks, logs, cancel, attach).

Wrong options raise IPython's UsageError with what is wrong; a pool that is down, or a missing
sign-in, is one clear line (PoolProblem), never a gRPC traceback; a task that fails shows the
remote traceback and fails the cell.
"""

from __future__ import annotations

import argparse
import ast
import getpass
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from traitlets import TraitError

from hivemind_nodepool.client.environment import EnvironmentChoice
from hivemind_nodepool.client.submission import TaskRequest, parse_assignment, parse_labels
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.bundle import left_out_notice
from hivemind_nodepool.protocol.errors import HiveMindError, InvalidInput
from hivemind_nodepool.protocol.states import elapsed_seconds, state_name
from hivemind_nodepool.protocol.units import format_duration, format_size, parse_duration, parse_size

from .config import HiveMind
from .errors import PoolProblem
from .handle import TaskHandle
from .live_view import notice_bundle
from .packaging import cell_task_name, check_identifier, pack_cell, read_requirements
from .pool import PoolConnector


class HelpShown(Exception):
    """`--help` printed the help: the magic ends there, quietly (no UsageError printing it again)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}\n{self.format_usage().strip()}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if status == 0 and message is None:  # argparse's help action, after printing the help
            raise HelpShown()
        raise UsageError(message or self.format_help())


def cell_parser() -> _Parser:
    parser = _Parser(prog="%%hivemind", add_help=False, description="Run this cell on the HiveMind pool.")
    parser.add_argument("--cpus", type=float, help="CPU cores (fractions allowed)")
    parser.add_argument("--memory", help="memory, e.g. 512M or 8G")
    parser.add_argument("--gpus", type=int, help="GPUs")
    parser.add_argument("--disk", metavar="SIZE", help="disk for the task's files and /tmp, e.g. 20G")
    parser.add_argument(
        "--labels",
        action="append",
        default=[],
        metavar="K=V[,K=V]",
        help="the worker must carry these labels",
    )
    parser.add_argument("--dir", help="send this folder's files with the cell")
    parser.add_argument(
        "--env",
        metavar="MODE",
        help="the packages: auto (what the cell imports, pinned as installed in this kernel; the "
        "default), freeze (every package of this kernel), none (the bare runtime), requirements, image",
    )
    parser.add_argument(
        "--requirements", metavar="FILE", help="install this requirements file instead (--env requirements)"
    )
    parser.add_argument(
        "--image", metavar="NAME", help="run in this image, one the worker's admin allow-listed (--env image)"
    )
    parser.add_argument("--python", metavar="X.Y", help="run only on a worker with this Python version")
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a papermill parameter (a Python literal or text)",
    )
    parser.add_argument("--push", action="append", default=[], metavar="A,B", help="variables to send")
    parser.add_argument("--pull", action="append", default=[], metavar="C,D", help="variables to bring back")
    parser.add_argument(
        "--pull-pickle",
        action="store_true",
        help="also load --pull values that come back only pickled (trust the pool's workers first)",
    )
    parser.add_argument(
        "--save",
        action="store_true",
        help="keep the whole result (the executed notebook too) in the results folder, "
        "not only the output files",
    )
    parser.add_argument("--timeout", help="e.g. 90s, 30m, 2h")
    parser.add_argument("--retries", type=int, help="retries after a lost worker")
    parser.add_argument("--name", help="the task's name")
    parser.add_argument("--no-wait", action="store_true", help="return a handle at once")
    parser.add_argument(
        "--wait-for-fit",
        action="store_true",
        help="wait even when no connected worker could run it yet (for a larger one to join)",
    )
    parser.add_argument("-h", "--help", action="help", help="show this help")
    return parser


def _names(items: list[str], option: str) -> list[str]:
    names: list[str] = []
    for item in items:
        for name in filter(None, (part.strip() for part in item.split(","))):
            try:
                check_identifier(name)
            except InvalidInput as exc:
                raise UsageError(f"{option}: {exc}") from None
            if name not in names:
                names.append(name)
    return names


def _parameter(text: str) -> tuple[str, Any]:
    """NAME=VALUE with VALUE a Python literal when it is one (also JSON), else the text itself."""
    name, value = parse_assignment(text)
    if isinstance(value, str):
        raw = text.partition("=")[2]
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            value = raw
    return name, value


class CellOptions:
    """The checked options of one %%hivemind line."""

    def __init__(self, line: str, settings: HiveMind, user_ns: dict[str, Any]) -> None:
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%%hivemind: cannot split the options: {exc}") from None
        args = cell_parser().parse_args(argv)
        try:
            parameters = dict(_parameter(item) for item in args.param)
            for key in parameters:
                check_identifier(key, "parameter")
            memory = parse_size(args.memory) if args.memory is not None else settings.default_memory_bytes
            disk = parse_size(args.disk) if args.disk is not None else 0
            timeout = parse_duration(args.timeout) if args.timeout is not None else None
            labels = parse_labels(args.labels)
        except InvalidInput as exc:
            raise UsageError(f"%%hivemind: {exc}") from None
        cpus = settings.default_cpus if args.cpus is None else args.cpus
        gpus = settings.default_gpus if args.gpus is None else args.gpus
        if not cpus > 0:
            raise UsageError(f"%%hivemind: --cpus must be more than 0, not {args.cpus}")
        if gpus < 0:
            raise UsageError(f"%%hivemind: --gpus cannot be negative ({gpus})")
        if memory <= 0:
            raise UsageError("%%hivemind: --memory must be more than 0")
        if args.disk is not None and disk <= 0:
            raise UsageError("%%hivemind: --disk must be more than 0")
        if args.retries is not None and args.retries < 0:
            raise UsageError("%%hivemind: --retries cannot be negative")
        self._variables(args, user_ns)
        self.folder = Path(args.dir).expanduser() if args.dir else None
        if self.folder is not None and not self.folder.is_dir():
            raise UsageError(f"%%hivemind --dir: {args.dir} is not a folder")
        self.requirements = Path(args.requirements).expanduser() if args.requirements else None
        if self.requirements is not None and not self.requirements.is_file():
            raise UsageError(f"%%hivemind --requirements: {args.requirements} is not a file")
        try:
            text = read_requirements(self.requirements) if self.requirements is not None else None
            self.environment = EnvironmentChoice.from_options(args.env, text, args.image, args.python)
        except InvalidInput as exc:
            raise UsageError(f"%%hivemind: {exc}") from None
        self.no_wait = bool(args.no_wait)
        self.save = bool(args.save) or settings.save_results
        self.wait_for_fit = bool(args.wait_for_fit) or settings.wait_for_fit
        self.request = TaskRequest(
            cpus=cpus,
            memory=memory,
            gpus=gpus,
            disk=disk,
            parameters=parameters,
            timeout=timeout,
            max_retries=-1 if args.retries is None else args.retries,
            name=args.name or "",
            labels=labels,
            pull_variables=tuple(self.pull),
        )

    def _variables(self, args: argparse.Namespace, user_ns: dict[str, Any]) -> None:
        """--push, --pull and --pull-pickle, checked."""
        self.push = _names(args.push, "--push")
        missing = [name for name in self.push if name not in user_ns]
        if missing:
            raise UsageError(f"%%hivemind --push: no variable {', '.join(missing)} in this notebook")
        self.push_values = {name: user_ns[name] for name in self.push}
        self.pull = _names(args.pull, "--pull")
        self.pull_pickle = bool(args.pull_pickle)
        if self.pull_pickle and not self.pull:
            raise UsageError("%%hivemind --pull-pickle: give the variables with --pull")


def _running_count(shell: Any) -> int | None:
    """The number the running cell shows as `In[N]` (IPython's result for the cell being run)."""
    running = getattr(getattr(shell, "displayhook", None), "exec_result", None)
    count = getattr(running, "execution_count", None)
    return count if isinstance(count, int) else None


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


@magics_class
class HiveMindMagics(Magics):
    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        try:
            self.settings = HiveMind(config=shell.config if shell is not None else None)
        except TraitError as exc:  # a bad c.HiveMind.* must not stop the magics from loading
            print(f"[hivemind] ignoring the HiveMind settings: {exc}", file=sys.stderr)
            self.settings = HiveMind()
        self.connector = PoolConnector(self.settings)

    # -- %%hivemind -----------------------------------------------------------------------------

    @cell_magic
    def hivemind(self, line: str, cell: str) -> TaskHandle | None:
        """Run this cell on the HiveMind pool. `%%hivemind --help` lists the options."""
        try:
            options = CellOptions(line, self.settings, self.shell.user_ns if self.shell else {})
        except HelpShown:
            return None
        handle = self._submit(cell, options)
        if options.no_wait:
            return handle
        handle.result()
        return None

    def _cell_name(self) -> str:
        """The notebook and cell this magic runs in, as the task's default name."""
        user_ns = self.shell.user_ns if self.shell else {}
        session = user_ns.get("__session__") or os.environ.get("JPY_SESSION_NAME")
        # inside run_cell IPython has already counted this cell on; its own number is the result's
        count = _running_count(self.shell) or getattr(self.shell, "execution_count", None)
        return cell_task_name(session if isinstance(session, str) else None, count)

    def _notice(self, text: str) -> None:
        """HiveMind's own line in the cell (what environment the cell gets): a quiet output in a
        kernel with a frontend, a prefixed line elsewhere."""
        if getattr(self.shell, "kernel", None) is not None:
            from IPython.display import publish_display_data

            publish_display_data(data=notice_bundle(text), metadata={})
        else:
            print(f"[hivemind] {text}", flush=True)

    def _submit(self, cell: str, options: CellOptions) -> TaskHandle:
        if not options.request.name:
            options.request = replace(options.request, name=self._cell_name())
        workdir = Path(tempfile.mkdtemp(prefix="hivemind-cell-"))
        try:
            try:
                client = self.connector.client()
                manifest, packed = pack_cell(
                    cell,
                    options.request,
                    workdir / "bundle.zip",
                    folder=options.folder,
                    push=options.push_values,
                    max_bytes=self.settings.max_bundle_bytes,
                    environment=options.environment,
                )
            except InvalidInput as exc:
                raise UsageError(f"%%hivemind: {exc}") from None
            except HiveMindError as exc:
                raise PoolProblem(str(exc)) from None
            if packed.left_out:
                print(f"[hivemind] {left_out_notice(packed.left_out)}", file=sys.stderr, flush=True)
            try:
                task = client.submit(manifest, packed.path)
            except HiveMindError as exc:
                raise PoolProblem(str(exc)) from None
            for line in packed.notices:  # what the cell runs with: said once it is on its way
                self._notice(line)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        count = _running_count(self.shell)
        handle = TaskHandle(
            task.id,
            self.connector,
            self.settings,
            self.shell,
            pull_pickle=options.pull_pickle,
            cell_count=count,
        )
        handle.wait_for_fit = options.wait_for_fit
        handle.save = options.save
        return handle

    # -- %hivemind ------------------------------------------------------------------------------

    @line_magic("hivemind")  # type: ignore[arg-type]
    def hivemind_line(self, line: str) -> Any:
        """%hivemind login|logout|whoami|status|tasks|logs ID|cancel ID|attach ID|help"""
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%hivemind: {exc}") from None
        if not argv or argv[0] in ("help", "-h", "--help"):
            print(LINE_HELP)
            print(CELL_HELP)
            return None
        command, rest = argv[0], argv[1:]
        action = getattr(self, f"_cmd_{command}", None)
        if action is None:
            raise UsageError(f"%hivemind: unknown command {command!r}\n{LINE_HELP}")
        try:
            return action(rest)
        except HiveMindError as exc:
            if isinstance(exc, InvalidInput):
                raise UsageError(f"%hivemind {command}: {exc}") from None
            raise PoolProblem(str(exc)) from None

    def _one_id(self, command: str, rest: list[str]) -> str:
        if len(rest) != 1 or rest[0].startswith("-"):
            raise UsageError(f"%hivemind {command} needs exactly one task id")
        return rest[0]

    def _cmd_login(self, rest: list[str]) -> None:
        parser = _Parser(prog="%hivemind login", add_help=False)
        parser.add_argument("--pool", default=None, help="HOST:PORT of the pool")
        parser.add_argument("--user", default=None)
        parser.add_argument(
            "--password-env",
            default=None,
            metavar="VAR",
            help="read the password from this environment variable",
        )
        args = parser.parse_args(rest)
        saved = self.connector.credential()
        user = args.user or (saved.user if saved else None) or getpass.getuser()
        if args.password_env:
            password = os.environ.get(args.password_env)
            if not password:
                raise UsageError(f"%hivemind login: ${args.password_env} is empty or not set")
        else:
            password = getpass.getpass(f"HiveMind password for {user}: ")
        pool = args.pool or (saved.pool if saved else None)
        credential, who = self.connector.sign_in(user, password, pool)
        role = " (admin)" if who.admin else ""
        print(f"signed in to {credential.pool} as {credential.user}{role}")

    def _cmd_logout(self, rest: list[str]) -> None:
        self.connector.sign_out()
        print("signed out")

    def _cmd_whoami(self, rest: list[str]) -> str:
        user = self.connector.client().whoami()
        return f"{user.name}{' (admin)' if user.admin else ''} on {self.connector.pool_address()}"

    def _cmd_status(self, rest: list[str]) -> None:
        client = self.connector.client()
        status = client.pool_status()
        workers = client.list_workers()
        print(
            f"pool {client.address}: {status.workers_online} of {status.workers_total} workers online; "
            f"{status.allocated.cpus:g}/{status.capacity.cpus:g} CPUs, "
            f"{status.allocated.gpus}/{status.capacity.gpus} GPUs in use"
        )
        busy = ", ".join(f"{k} {v}" for k, v in sorted(status.tasks_by_state.items()) if v)
        print(f"tasks: {busy or 'none'}")
        if workers:
            rows = [
                [
                    w.name,
                    pb.WorkerState.Name(w.state).removeprefix("WORKER_").lower(),
                    f"{w.allocated.cpus:g}/{w.capacity.cpus:g}",
                    f"{format_size(w.allocated.memory_bytes)}/{format_size(w.capacity.memory_bytes)}",
                    f"{w.allocated.gpus}/{w.capacity.gpus}",
                    str(w.running_count),
                ]
                for w in workers
            ]
            print(_table(rows, ["WORKER", "STATE", "CPUS", "MEMORY", "GPUS", "TASKS"]))

    def _cmd_tasks(self, rest: list[str]) -> None:
        parser = _Parser(prog="%hivemind tasks", add_help=False)
        parser.add_argument("--limit", type=int, default=20)
        parser.add_argument("--state", action="append", default=[])
        args = parser.parse_args(rest)
        states = []
        for name in args.state:
            if name.upper() not in pb.TaskState.DESCRIPTOR.values_by_name:
                raise UsageError(f"%hivemind tasks: unknown state {name!r}")
            states.append(pb.TaskState.Value(name.upper()))
        if not 1 <= args.limit <= 500:
            raise UsageError("%hivemind tasks: --limit must be between 1 and 500")
        page = self.connector.client().list_tasks(states, page_size=args.limit)
        rows = []
        for task in page.tasks:
            rows.append(
                [
                    task.id,
                    task.manifest.name,
                    state_name(task.state),
                    task.worker_name or "-",
                    format_duration(elapsed_seconds(task, time.time())),
                ]
            )
        print(_table(rows, ["ID", "NAME", "STATE", "WORKER", "TIME"]) if rows else "no tasks")
        if page.total > len(rows):
            print(f"({len(rows)} of {page.total}; --limit N for more)")

    def _cmd_logs(self, rest: list[str]) -> None:
        task_id = self._one_id("logs", rest)
        text = TaskHandle(task_id, self.connector, self.settings, self.shell).logs()
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")

    def _cmd_cancel(self, rest: list[str]) -> None:
        task_id = self._one_id("cancel", rest)
        print(f"{task_id}: {TaskHandle(task_id, self.connector, self.settings, self.shell).cancel()}")

    def _cmd_fetch(self, rest: list[str]) -> None:
        parser = _Parser(prog="%hivemind fetch", add_help=False)
        parser.add_argument("task_id")
        parser.add_argument("--to", default=None, help="a new or empty folder (default: the results folder)")
        args = parser.parse_args(rest)
        folder = TaskHandle(args.task_id, self.connector, self.settings, self.shell).fetch(args.to)
        print(f"result of {args.task_id} in {folder}/")

    def _cmd_attach(self, rest: list[str]) -> TaskHandle:
        task_id = self._one_id("attach", rest)
        self.connector.client().get_task(task_id)  # unknown ids fail here, not later
        return TaskHandle(task_id, self.connector, self.settings, self.shell)


LINE_HELP = """%hivemind COMMAND
  login [--pool HOST:PORT] [--user NAME] [--password-env VAR]   sign in (asks for the password)
  logout                      sign out
  whoami                      who you are on which pool
  status                      the pool and its workers
  tasks [--state S] [--limit N]   your tasks, newest first
  logs ID                     a task's output so far
  cancel ID                   cancel a task
  fetch ID [--to DIR]         a task's whole result, into the results folder (or DIR)
  attach ID                   a handle for a task (e.g. after a kernel restart): h = %hivemind attach ID
  help                        this help"""

CELL_HELP = """
%%hivemind [OPTIONS] on the first line of a cell runs the cell on the pool, e.g.
  %%hivemind --cpus 1 --memory 1G
  %%hivemind --no-wait        returns a handle at once: h.status(), h.wait(), h.result(), h.cancel()
`%%hivemind --help` (alone in a cell, or above code, which then does not run) lists every option."""


def _help_without_body(lines: list[str]) -> list[str]:
    """IPython refuses a cell magic with an empty body before the magic sees it; give
    `%%hivemind --help` alone in a cell a blank body so the help shows."""
    if not lines or not lines[0].startswith("%%hivemind") or any(line.strip() for line in lines[1:]):
        return lines
    try:
        words = shlex.split(lines[0][len("%%hivemind") :])
    except ValueError:
        return lines
    if lines[0][len("%%hivemind") :][:1] not in ("", " ", "\t", "\n") or not {"-h", "--help"} & set(words):
        return lines
    return [lines[0].rstrip("\n") + "\n", "\n"]


def register(ipython: Any) -> None:
    magics = HiveMindMagics(ipython)
    ipython.register_magics(magics)
    if _help_without_body not in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.append(_help_without_body)
    if magics.settings not in ipython.configurables:
        ipython.configurables.append(magics.settings)  # so %config HiveMind... works


def unregister(ipython: Any) -> None:
    if _help_without_body in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.remove(_help_without_body)
    ipython.configurables[:] = [c for c in ipython.configurables if not isinstance(c, HiveMind)]
