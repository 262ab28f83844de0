"""FakeWorker: registers with a join token, keeps a Connect stream with heartbeats, takes assignments
and reports about them through the real PoolClient, without Docker or papermill. For pool tests."""

from __future__ import annotations

import queue
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

from hivemind_nodepool.client import PoolClient, WorkerStream
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol.errors import HiveMindError

GiB = 1024**3


def make_facts(
    cpus: int = 4,
    memory: int = 8 * GiB,
    gpus: int = 0,
    labels: dict[str, str] | None = None,
    hostname: str = "fake-host",
) -> pb.MachineFacts:
    facts = pb.MachineFacts(
        hostname=hostname,
        cpu_cores=cpus,
        memory_bytes=memory,
        disk_free_bytes=100 * GiB,
        docker_ok=True,
        executors=["docker"],
        version="test",
        platform="linux",
    )
    for index in range(gpus):
        facts.gpus.append(pb.Gpu(index=index, name="Fake GPU", memory_bytes=16 * GiB, uuid=f"GPU-{index}"))
    facts.labels.update(labels or {})
    return facts


class FakeWorker:
    def __init__(
        self,
        address: str,
        join_token: str,
        name: str = "fake",
        cpus: int = 4,
        memory: int = 8 * GiB,
        gpus: int = 0,
        labels: dict[str, str] | None = None,
        heartbeat_interval: float = 0.5,
        credential: str | None = None,
        worker_id: str | None = None,
        task_disk: int = 0,
    ) -> None:
        self.address = address
        self.name = name
        self.facts = make_facts(cpus, memory, gpus, labels, hostname=name)
        self.facts.capacity.disk_bytes = task_disk
        self.heartbeat_interval = heartbeat_interval
        self.client = PoolClient(address)
        if credential is None:
            answer = self.client.register_worker(join_token, name, self.facts)
            self.worker_id, self.credential = answer.worker_id, answer.credential
        else:
            self.client.token = credential
            self.worker_id, self.credential = worker_id or "", credential
        self.messages: queue.Queue[pb.PoolMessage] = queue.Queue()
        self.running: dict[str, int] = {}  # task id -> attempt, as told in Hello and heartbeats
        self.heartbeating = True
        self.draining = False
        self.welcome: pb.Welcome | None = None
        self.stream_error: HiveMindError | None = None
        self._outbox: queue.Queue[pb.WorkerMessage | None] = queue.Queue()
        self._call: WorkerStream | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    # -- the Connect stream ---------------------------------------------------------------------

    def _running_list(self) -> list[pb.RunningAttempt]:
        return [pb.RunningAttempt(task_id=t, attempt=a) for t, a in self.running.items()]

    def _outgoing(self) -> Iterator[pb.WorkerMessage]:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            yield item

    def connect(self) -> FakeWorker:
        self._stop.clear()
        self._outbox = queue.Queue()
        self._outbox.put(pb.WorkerMessage(hello=pb.Hello(facts=self.facts, running=self._running_list())))
        self._call = self.client.connect(self._outgoing())
        reader = threading.Thread(target=self._read, args=(self._call,), daemon=True)
        beater = threading.Thread(target=self._beat, daemon=True)
        self._threads = [reader, beater]
        reader.start()
        beater.start()
        first = self.next_message("welcome", timeout=10)
        self.welcome = first.welcome
        return self

    def _read(self, call: WorkerStream) -> None:
        try:
            for message in call:
                if message.WhichOneof("body") != "ack":
                    self.messages.put(message)
        except HiveMindError as exc:
            self.stream_error = exc

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_interval):
            if self.heartbeating:
                self._outbox.put(
                    pb.WorkerMessage(
                        heartbeat=pb.Heartbeat(running=self._running_list(), draining=self.draining)
                    )
                )

    def disconnect(self) -> None:
        self._stop.set()
        self._outbox.put(None)
        if self._call is not None:
            self._call.cancel()
        for thread in self._threads:
            thread.join(timeout=5)

    def close(self) -> None:
        self.disconnect()
        self.client.close()

    def next_message(self, kind: str | None = None, timeout: float = 10.0) -> pb.PoolMessage:
        """The next message from the pool (of `kind`: assignment, cancel, drain, welcome)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {kind or 'message'} from the pool within {timeout} s")
            try:
                message = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            if kind is None or message.WhichOneof("body") == kind:
                return message

    def next_assignment(self, timeout: float = 10.0, track: bool = True) -> pb.Assignment:
        assignment = self.next_message("assignment", timeout).assignment
        if track:
            self.running[assignment.task_id] = assignment.attempt
        return assignment

    # -- reports --------------------------------------------------------------------------------

    def status(self, assignment: pb.Assignment, state: int, message: str = "") -> None:
        self.client.report_status(
            pb.StatusReport(
                task_id=assignment.task_id, attempt=assignment.attempt, state=state, message=message
            )
        )  # type: ignore[arg-type]

    def events(self, assignment: pb.Assignment, texts: list[str], first: int = 1) -> int:
        batch = pb.EventBatch(task_id=assignment.task_id, attempt=assignment.attempt)
        for offset, text in enumerate(texts):
            batch.events.append(pb.TaskEvent(seq=first + offset, kind=pb.TaskEvent.STDOUT, text=text))
        return self.client.report_events(batch)

    def finish(
        self,
        assignment: pb.Assignment,
        outcome: int = pb.SUCCEEDED,
        result: Path | None = None,
        error: str = "",
        requeue: bool = False,
    ) -> pb.Task:
        header = pb.ResultHeader(
            task_id=assignment.task_id,
            attempt=assignment.attempt,
            outcome=outcome,  # type: ignore[arg-type]
            error=error,
            requeue=requeue,
        )
        task = self.client.upload_result(header, result)
        self.running.pop(assignment.task_id, None)
        return task

    def run_to_success(self, assignment: pb.Assignment, result: Path | None = None) -> pb.Task:
        for state in (pb.PREPARING, pb.RUNNING, pb.UPLOADING):
            self.status(assignment, state)
        return self.finish(assignment, pb.SUCCEEDED, result)


def make_result_zip(path: Path, text: str = "done") -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("main.ipynb", '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
        archive.writestr("outputs/result.txt", text)
    return path
