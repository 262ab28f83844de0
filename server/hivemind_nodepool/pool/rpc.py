"""Servicer method wrappers: a HiveMindError becomes its gRPC status (from the table in
protocol/errors.py) with its message and its class name; anything else is logged with its traceback
and answered INTERNAL, so a bug never leaks a stack trace to callers."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from hivemind_nodepool.pool.disk import MESSAGE as DISK_FULL
from hivemind_nodepool.pool.disk import is_disk_full
from hivemind_nodepool.protocol.errors import DiskFull, HiveMindError, InternalError, status_for

log = logging.getLogger(__name__)

S = TypeVar("S")
MAX_DETAILS = 1000  # status messages travel in headers; a message echoing huge input must not break them
R = TypeVar("R")


async def abort_with_error(context: grpc.aio.ServicerContext[Any, Any], error: HiveMindError) -> None:
    """End the call with the error's status and message, its class name in the trailing metadata."""
    code, details, trailing = status_for(error)
    await context.abort(code, details[:MAX_DETAILS], trailing_metadata=trailing)


async def _abort_with(context: grpc.aio.ServicerContext[Any, Any], name: str, exc: Exception) -> None:
    """End the call with the status for exc (call it from the except block that caught exc).

    HiveMindErrors become their status and message; an abort already under way passes through;
    a write that failed for lack of space is DiskFull; anything else is logged with its traceback
    and answered INTERNAL, without details."""
    if isinstance(exc, (grpc.aio.AbortError, grpc.aio.UsageError)):
        raise exc
    if isinstance(exc, HiveMindError):
        await abort_with_error(context, exc)
    if is_disk_full(exc):  # a write that no layer below turned into DiskFull: still not a bug
        log.warning("%s failed: the disk is full (%s)", name, exc)
        await abort_with_error(context, DiskFull(DISK_FULL))
    log.exception("%s failed", name)
    await abort_with_error(context, InternalError("internal error in the pool; see its log"))


def unary(
    method: Callable[[S, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[R]],
) -> Callable[[S, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[R]]:
    @functools.wraps(method)
    async def wrapper(self: S, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> R:
        try:
            return await method(self, request, context)
        except Exception as exc:
            await _abort_with(context, method.__name__, exc)
        raise AssertionError("unreachable")

    return wrapper


def stream(
    method: Callable[[S, Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[R]],
) -> Callable[[S, Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[R]]:
    @functools.wraps(method)
    async def wrapper(self: S, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[R]:
        try:
            async for item in method(self, request, context):
                yield item
        except Exception as exc:
            await _abort_with(context, method.__name__, exc)

    return wrapper
