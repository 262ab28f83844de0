"""The one error table, and error classes that survive the trip across a real gRPC server.

The server here is a grpc.aio server on a free loopback port, with the pool's own servicer wrappers
(`pool.rpc.unary` / `stream`) on the real method names, so the real PoolClient calls it."""

from __future__ import annotations

import asyncio
import inspect
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

import hivemind_jupyter.errors
import hivemind_worker.errors
from hivemind_nodepool.client import PoolClient
from hivemind_nodepool.pool.rpc import stream, unary
from hivemind_nodepool.proto import nodepool_pb2 as pb
from hivemind_nodepool.protocol import errors
from hivemind_nodepool.protocol.errors import (
    ERROR_KEY,
    STATUS,
    Cancelled,
    HiveMindError,
    InternalError,
    NotFound,
    PoolUnavailable,
    RateLimited,
    TooLarge,
    http_status,
    status_of,
)

NODEPOOL = "hivemind.nodepool.v1.NodePool"
GATEWAY = "hivemind.nodepool.v1.WorkerGateway"
BY_NAME = {cls.__name__: cls for cls in STATUS}


class Mine(TooLarge):
    """A subclass the wire does not know: it travels as its nearest listed class."""


def all_subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= all_subclasses(sub)
    return found


# -- the table ------------------------------------------------------------------------------------


def test_every_shared_error_class_is_in_the_table() -> None:
    defined = {
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, HiveMindError) and cls.__module__ == errors.__name__
    }
    assert defined == set(STATUS)


def test_every_error_class_anywhere_has_a_grpc_and_an_http_code() -> None:
    assert hivemind_worker.errors.Fenced and hivemind_jupyter.errors.PoolProblem  # loaded
    classes = all_subclasses(HiveMindError) | {HiveMindError}
    assert len(classes) > len(STATUS)  # the worker's and the Jupyter side's are counted too
    for cls in classes:
        status = status_of(cls)
        assert isinstance(status.grpc, grpc.StatusCode) and status.grpc != grpc.StatusCode.OK, cls
        assert 400 <= status.http < 600, cls


def test_http_codes() -> None:
    expected = {
        "InvalidInput": 400,
        "BundleError": 400,
        "Unauthenticated": 401,
        "PermissionDenied": 403,
        "NotFound": 404,
        "AlreadyExists": 409,
        "Conflict": 409,
        "TooLarge": 413,
        "DiskFull": 507,
        "RateLimited": 429,
        "PoolUnavailable": 502,
        "DeadlineExceeded": 504,
    }
    for name, code in expected.items():
        assert http_status(BY_NAME[name]("x")) == code, name
    assert http_status(Mine("x")) == 413
    assert http_status(hivemind_worker.errors.WorkerError("x")) == 502


def test_code_comes_from_the_table() -> None:
    assert TooLarge("x").code == RateLimited("x").code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert NotFound("x").code == grpc.StatusCode.NOT_FOUND


# -- a real server --------------------------------------------------------------------------------


def _raise(spec: str) -> None:
    """spec is a class name from the table, `Mine`, `ValueError` (a bug) or `raw:CODE:name`."""
    if spec == "Mine":
        raise Mine("mine is too big")
    if spec == "ValueError":
        raise ValueError("a bug")
    raise BY_NAME[spec](f"{spec} happened")


class Raiser:
    """Servicer methods that fail with the error their request names."""

    @unary
    async def GetTask(self, request: pb.TaskRef, context: grpc.aio.ServicerContext) -> pb.Task:
        _raise(request.task_id)
        return pb.Task()

    @stream
    async def FetchResult(self, request: pb.TaskRef, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        yield pb.Chunk(data=b"first")
        _raise(request.task_id)

    @stream
    async def Connect(self, requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for message in requests:
            _raise(message.hello.facts.hostname)
        yield pb.PoolMessage()


async def raw_get_task(request: pb.TaskRef, context: grpc.aio.ServicerContext) -> pb.Task:
    """Ends the call with any code and any class name, as a foreign or newer server might."""
    _, code, name = request.task_id.split(":", 2)
    await context.abort(grpc.StatusCode[code], f"raw {name}", trailing_metadata=((ERROR_KEY, name),))
    return pb.Task()


def _handlers() -> list[grpc.GenericRpcHandler]:
    raiser = Raiser()

    async def get_task(request: pb.TaskRef, context: grpc.aio.ServicerContext) -> pb.Task:
        if request.task_id.startswith("raw:"):
            return await raw_get_task(request, context)
        return await raiser.GetTask(request, context)

    nodepool = grpc.method_handlers_generic_handler(
        NODEPOOL,
        {
            "GetTask": grpc.unary_unary_rpc_method_handler(
                get_task, pb.TaskRef.FromString, pb.Task.SerializeToString
            ),
            "FetchResult": grpc.unary_stream_rpc_method_handler(
                raiser.FetchResult, pb.TaskRef.FromString, pb.Chunk.SerializeToString
            ),
        },
    )
    gateway = grpc.method_handlers_generic_handler(
        GATEWAY,
        {
            "Connect": grpc.stream_stream_rpc_method_handler(
                raiser.Connect, pb.WorkerMessage.FromString, pb.PoolMessage.SerializeToString
            )
        },
    )
    return [nodepool, gateway]


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    """A grpc.aio server on its own loop in a thread, on a free loopback port."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(_handlers())
        state["port"] = server.add_insecure_port("127.0.0.1:0")
        state["loop"], state["stop"] = asyncio.get_running_loop(), asyncio.Event()
        await server.start()
        ready.set()
        await state["stop"].wait()
        await server.stop(None)

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield f"127.0.0.1:{state['port']}"
    state["loop"].call_soon_threadsafe(state["stop"].set)
    thread.join(10)
    assert not thread.is_alive()


@pytest.fixture
def client(address: str) -> Iterator[PoolClient]:
    with PoolClient(address, timeout=10) as pool_client:
        yield pool_client


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_every_class_survives_a_unary_call(client: PoolClient, name: str) -> None:
    with pytest.raises(HiveMindError) as caught:
        client.get_task(name)
    assert type(caught.value) is BY_NAME[name]
    assert caught.value.code == STATUS[BY_NAME[name]].grpc
    if name != "PoolUnavailable":  # that one's message is reworded to say what to check
        assert str(caught.value) == f"{name} happened"


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_every_class_survives_a_broken_stream(client: PoolClient, name: str, tmp_path: Any) -> None:
    with pytest.raises(HiveMindError) as caught:
        client.fetch_result(name, tmp_path / "result.zip")
    assert type(caught.value) is BY_NAME[name]


def test_too_large_is_not_rate_limited(client: PoolClient) -> None:
    with pytest.raises(TooLarge) as too_large:
        client.get_task("TooLarge")
    with pytest.raises(RateLimited) as limited:
        client.get_task("RateLimited")
    assert not isinstance(too_large.value, RateLimited) and not isinstance(limited.value, TooLarge)
    assert http_status(too_large.value) == 413 and http_status(limited.value) == 429


def test_a_subclass_travels_as_its_listed_class(client: PoolClient) -> None:
    with pytest.raises(TooLarge, match="mine is too big") as caught:
        client.get_task("Mine")
    assert type(caught.value) is TooLarge


def test_a_bug_is_internal_without_details(client: PoolClient) -> None:
    with pytest.raises(InternalError, match="internal error in the pool") as caught:
        client.get_task("ValueError")
    assert "a bug" not in str(caught.value)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("raw:RESOURCE_EXHAUSTED:NotAClass", RateLimited),  # unknown: the code decides
        ("raw:RESOURCE_EXHAUSTED:os.system", RateLimited),
        ("raw:RESOURCE_EXHAUSTED:__class__", RateLimited),
        ("raw:RESOURCE_EXHAUSTED:WorkerError", RateLimited),  # real, but not one the wire carries
        ("raw:RESOURCE_EXHAUSTED:TooLarge", TooLarge),
        ("raw:NOT_FOUND:TooLarge", NotFound),  # a name that contradicts the code is ignored
        ("raw:OUT_OF_RANGE:", errors.InvalidInput),
        ("raw:DATA_LOSS:", HiveMindError),
    ],
)
def test_unknown_or_contradicting_names_fall_back_to_the_code(
    client: PoolClient, spec: str, expected: type[HiveMindError]
) -> None:
    with pytest.raises(HiveMindError) as caught:
        client.get_task(spec)
    assert type(caught.value) is expected
    assert caught.value.code == grpc.StatusCode[spec.split(":")[1]]


def _hello(name: str) -> Iterator[pb.WorkerMessage]:
    yield pb.WorkerMessage(hello=pb.Hello(facts=pb.MachineFacts(hostname=name)))


def test_the_connect_stream_raises_hivemind_errors(client: PoolClient) -> None:
    for name in ("Unauthenticated", "TooLarge", "RateLimited"):
        with pytest.raises(HiveMindError) as caught:
            list(client.connect(_hello(name)))
        assert type(caught.value) is BY_NAME[name]


def test_cancelling_the_connect_stream_is_cancelled(client: PoolClient) -> None:
    never = threading.Event()

    def quiet() -> Iterator[pb.WorkerMessage]:
        never.wait(10)
        return
        yield

    call = client.connect(quiet())
    call.cancel()
    with pytest.raises(Cancelled):
        next(call)
    never.set()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_connect_to_a_closed_port_is_pool_unavailable() -> None:
    address = f"127.0.0.1:{_closed_port()}"
    with PoolClient(address, timeout=5) as pool_client:
        with pytest.raises(PoolUnavailable, match=address):
            next(pool_client.connect(_hello("w")))
        with pytest.raises(PoolUnavailable):
            pool_client.get_task("t-1")
