"""/hivemind/api/tasks: list, get, submit, cancel, retry, fetch the result, read events."""

from __future__ import annotations

import math
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from jupyter_server.auth.decorator import authorized
from tornado import web

from hivemind_nodepool.client import PoolClient
from hivemind_nodepool.client.submission import TaskRequest
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.bundle import LeftOut, left_out_notice
from hivemind_nodepool.protocol.errors import InvalidInput
from hivemind_nodepool.protocol.jsonify import to_dict
from hivemind_nodepool.protocol.units import parse_duration, parse_size

from ..environment_choice import notebook_environment
from ..errors import ApiError
from ..packaging import pack_path
from ..results import fetch_into, public_files
from .base import INT64_MAX, HiveMindHandler

T = TypeVar("T")
TASK_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
SUBMIT_FIELDS = {
    "path",
    "entry",
    "name",
    "cpus",
    "memory",
    "disk",
    "gpus",
    "parameters",
    "timeout",
    "labels",
    "retries",
    "requirements",
    "environment",
    "image",
    "python",
}
MAX_EVENTS = 10_000
MAX_PATH = 4096
MAX_PAGE_TOKEN = 1024
# Bounds that keep a value inside its protobuf field; the pool's own checks are tighter.
MAX_WHOLE = 2**31 - 1
MAX_NUMBER = 1e15
STATE_NAMES = frozenset(pb.TaskState.DESCRIPTOR.values_by_name) - {"TASK_STATE_UNSPECIFIED"}


def _number(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"{key} must be a number")
    if not (math.isfinite(value) and abs(value) <= MAX_NUMBER):
        raise InvalidInput(f"{key} is out of range")
    return float(value)


def _integer(body: dict[str, Any], key: str, low: int = -MAX_WHOLE, high: int = MAX_WHOLE) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{key} must be a whole number")
    if not low <= value <= high:
        raise InvalidInput(f"{key} must be from {low} to {high}")
    return value


def _string(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"{key} must be a string")
    return value


class TaskBase(HiveMindHandler):
    def check_id(self, task_id: str) -> str:
        if not TASK_ID.match(task_id):
            raise ApiError(400, "not a task id")
        return task_id

    async def task_call(self, task_id: str, call: Callable[[PoolClient], T]) -> T:
        """A call about one task: another user's task reads as unknown (404), never 403."""
        self.check_id(task_id)
        try:
            return await self.pool(call)
        except ApiError as exc:
            if exc.status_code in (403, 404):
                raise ApiError(404, f"no task {task_id} (it does not exist or is not yours)") from None
            raise

    async def reply_task(
        self, task_id: str, method: Callable[[PoolClient, str], pb.Task], status: int = 200
    ) -> None:
        """Call a client method on the task (get, cancel, retry) and answer the task it returns."""
        task = await self.task_call(task_id, lambda client: method(client, task_id))
        self.reply(to_dict(task, every_field=True), status=status)

    def contents_root(self) -> Path:
        root = getattr(self.contents_manager, "root_dir", None) or self.serverapp.root_dir
        return Path(root).resolve()

    def resolve_path(self, relative: str) -> Path:
        """A contents-relative path, refused when it leaves the contents root (symbolic links
        included: the resolved path must stay inside)."""
        if (
            not relative
            or len(relative) > MAX_PATH
            or any(ord(c) < 32 for c in relative)
            or PurePosixPath(relative).is_absolute()
            or "\\" in relative
        ):
            raise InvalidInput("path must be a notebook or folder relative to the Jupyter root")
        if ".." in PurePosixPath(relative).parts:
            raise InvalidInput("path may not contain '..'")
        root = self.contents_root()
        try:
            target = (root / relative).resolve()
            exists = target.exists()
        except (OSError, RuntimeError) as exc:  # a name too long, a symlink loop
            raise InvalidInput(f"{relative[:200]} cannot be opened: {exc.__class__.__name__}") from None
        if target != root and root not in target.parents:
            raise InvalidInput(f"{relative[:200]} lies outside the Jupyter root")
        if not exists:
            raise InvalidInput(f"{relative[:200]} does not exist")
        return target


class TasksHandler(TaskBase):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        states = []
        for name in self.get_query_arguments("state"):
            if name not in STATE_NAMES:
                raise ApiError(400, f"unknown state {name!r}; use e.g. RUNNING, QUEUED, SUCCEEDED")
            states.append(pb.TaskState.Value(name))
        limit = self.query_int("limit", 50, 1, 500)
        token = self.query_text("page_token", MAX_PAGE_TOKEN)
        page = await self.pool(lambda c: c.list_tasks(states, page_size=limit, page_token=token))
        self.reply(
            {
                "tasks": [to_dict(t, every_field=True) for t in page.tasks],
                "next_page_token": page.next_page_token,
                "total": page.total,
            }
        )

    def _request(self, body: dict[str, Any]) -> TaskRequest:
        settings = self.hivemind
        cpus = _number(body, "cpus")
        gpus = _integer(body, "gpus", 0)
        retries = _integer(body, "retries", -1)
        memory = body.get("memory")
        if memory is not None and (isinstance(memory, bool) or not isinstance(memory, (str, int))):
            raise InvalidInput('memory must be a size like "8G" or a number of bytes')
        if isinstance(memory, int) and not 0 < memory <= INT64_MAX:
            raise InvalidInput("memory is out of range")
        disk = body.get("disk")
        if disk is not None and (isinstance(disk, bool) or not isinstance(disk, (str, int))):
            raise InvalidInput('disk must be a size like "20G" or a number of bytes')
        if isinstance(disk, int) and not 0 <= disk <= INT64_MAX:
            raise InvalidInput("disk is out of range")
        timeout = body.get("timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (str, int, float))):
            raise InvalidInput('timeout must be a duration like "30m" or a number of seconds')
        if isinstance(timeout, (int, float)):
            _number(body, "timeout")
        for key in ("memory", "disk", "timeout", "name", "entry"):
            if isinstance(body.get(key), str) and len(body[key]) > MAX_PATH:
                raise InvalidInput(f"{key} is longer than {MAX_PATH} characters")
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInput("parameters must be a JSON object")
        labels = body.get("labels") or {}
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise InvalidInput("labels must be an object of strings")
        return TaskRequest(
            cpus=settings.default_cpus if cpus is None else cpus,
            memory=parse_size(memory if memory is not None else settings.default_memory),
            gpus=settings.default_gpus if gpus is None else gpus,
            disk=parse_size(disk) if disk is not None else 0,
            parameters=parameters,
            timeout=parse_duration(timeout) if timeout is not None else None,
            max_retries=-1 if retries is None else retries,
            name=_string(body, "name") or "",
            labels=labels,
        )

    def _package_and_submit(
        self, target: Path, request: TaskRequest, entry: str | None, body: dict[str, Any]
    ) -> tuple[pb.Task, list[LeftOut], list[str]]:
        client = self.connector.client()  # fail fast (401) before packaging a big folder
        choice, notices = notebook_environment(body, target, entry, self.kernel_spec_manager)
        workdir = Path(tempfile.mkdtemp(prefix="hivemind-submit-"))
        try:
            manifest, packed = pack_path(
                target,
                request,
                workdir,
                entry=entry,
                max_bytes=self.hivemind.max_bundle_bytes,
                environment=choice,
            )
            return client.submit(manifest, packed.path), packed.left_out, notices + packed.notices
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body(SUBMIT_FIELDS)

        def prepare() -> tuple[Path, TaskRequest, str | None]:
            path = _string(body, "path")
            if not path:
                raise InvalidInput("path is required: a notebook or folder relative to the Jupyter root")
            return self.resolve_path(path), self._request(body), _string(body, "entry")

        target, request, entry = await self.blocking(prepare)
        task, left_out, notices = await self.blocking(self._package_and_submit, target, request, entry, body)
        # The Task, plus what the packer left out as secrets and the one line that says so, and
        # the lines about its environment (what was captured, what could not be).
        answer = to_dict(task, every_field=True)
        answer["left_out"] = [item.name for item in left_out]
        answer["notice"] = left_out_notice(left_out)
        answer["notices"] = notices
        self.reply(answer, status=201)


class TaskHandler(TaskBase):
    @web.authenticated
    @authorized
    async def get(self, task_id: str) -> None:
        await self.reply_task(task_id, PoolClient.get_task)


class CancelHandler(TaskBase):
    @web.authenticated
    @authorized
    async def post(self, task_id: str) -> None:
        self.json_body(set())  # no fields; a body, if any, must be an empty JSON object
        await self.reply_task(task_id, PoolClient.cancel_task)


class RetryHandler(TaskBase):
    @web.authenticated
    @authorized
    async def post(self, task_id: str) -> None:
        self.json_body(set())  # no fields; a body, if any, must be an empty JSON object
        await self.reply_task(task_id, PoolClient.retry_task, status=201)


class ResultHandler(TaskBase):
    @web.authenticated
    @authorized
    async def post(self, task_id: str) -> None:
        self.json_body(set())
        root = self.contents_root()
        results_root = (root / self.hivemind.results_dir).resolve()
        if root not in results_root.parents:
            raise ApiError(500, "c.HiveMind.results_dir must be a folder inside the Jupyter root")

        def fetch(client: PoolClient) -> dict[str, Any]:
            task = client.get_task(task_id)
            result = fetch_into(client, task, results_root)

            def rel(path: Path) -> str:
                return path.relative_to(root).as_posix()

            return {
                "folder": rel(result.folder),
                "notebook": rel(result.notebook) if result.notebook else None,
                "files": [rel(p) for p in public_files(result)],
                # Names this filesystem cannot hold, written under another name (shown in the panel).
                "renamed": [{"from": old, "to": new} for old, new in result.renamed.items()],
            }

        self.reply(await self.task_call(task_id, fetch))


class EventsHandler(TaskBase):
    @web.authenticated
    @authorized
    async def get(self, task_id: str) -> None:
        after = self.query_int("after", 0, 0, INT64_MAX)
        limit = self.query_int("limit", 1000, 1, MAX_EVENTS)

        def read(client: PoolClient) -> list[pb.TaskEvent]:
            events: list[pb.TaskEvent] = []
            stream = client.watch(task_id, after_seq=after, follow=False, reconnect_for=0)
            for event in stream:
                events.append(event)
                if len(events) >= limit:
                    break
            return events

        events = await self.task_call(task_id, read)
        last = max([after] + [int(e.seq) for e in events])
        self.reply({"events": [to_dict(e, every_field=True) for e in events], "last_seq": last})
