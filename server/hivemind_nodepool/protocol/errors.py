"""The package's exceptions and their one mapping to and from gRPC status codes.

Servers raise these; `abort_with` turns them into a status with a message. Clients get a
`grpc.RpcError`; `from_rpc_error` turns it back into the matching exception, so callers catch
`NotFound` and never look at status codes.
"""

from __future__ import annotations

import grpc


class HiveMindError(Exception):
    """Root of every error HiveMind raises on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN


class InvalidInput(HiveMindError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class Unauthenticated(HiveMindError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(HiveMindError):
    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(HiveMindError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(HiveMindError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Conflict(HiveMindError):
    """The request does not fit the current state (a stale attempt, a finished task)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class RateLimited(HiveMindError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class TooLarge(HiveMindError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class PoolUnavailable(HiveMindError):
    """The pool cannot be reached (down, wrong address, TLS mismatch)."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(HiveMindError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(HiveMindError):
    code = grpc.StatusCode.CANCELLED


class InternalError(HiveMindError):
    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[HiveMindError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.OUT_OF_RANGE: InvalidInput,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: Conflict,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimited,
    grpc.StatusCode.UNAVAILABLE: PoolUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.INTERNAL: InternalError,
}


def from_rpc_error(error: grpc.RpcError, address: str = "") -> HiveMindError:
    """The HiveMindError for a failed call, with a message a person can act on."""
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (error.details() if isinstance(error, grpc.Call) else None) or str(error)
    cls = _BY_CODE.get(code, HiveMindError)
    if cls is PoolUnavailable:
        where = f" at {address}" if address else ""
        details = (
            f"cannot reach the HiveMind pool{where} ({details}). "
            "Check that `hivemind-nodepool serve` is running and the address, port and TLS settings."
        )
    exc = cls(details)
    exc.code = code
    return exc


def status_for(error: HiveMindError) -> tuple[grpc.StatusCode, str]:
    """The status code and message a server sends for an error."""
    return error.code, str(error) or error.__class__.__name__
