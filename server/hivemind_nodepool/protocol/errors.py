"""The shared exceptions and the one table that maps each to its gRPC and HTTP status codes.

Servers raise these; the pool's servicer wrappers end the call with `status_for(error)`: the code,
the message, and the class name in the trailing metadata (`hivemind-error`), because two classes
may share a code (TooLarge, RateLimited and DiskFull are all RESOURCE_EXHAUSTED). Clients get a
`grpc.RpcError`; `from_rpc_error` turns it back into the same class, or, when the name is missing
or unknown, into the class the status code stands for. So callers catch `NotFound` and never look
at status codes, and the REST layer answers with the HTTP code of the class (`http_status`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import grpc

ERROR_KEY = "hivemind-error"  # trailing-metadata key that carries the class name across gRPC


class HiveMindError(Exception):
    """Root of every error HiveMind raises on purpose."""

    _code: grpc.StatusCode | None = None

    @property
    def code(self) -> grpc.StatusCode:
        """The gRPC status: the one the call ended with when the error came over the wire, else
        the table's for this class."""
        return self._code or status_of(self).grpc

    @code.setter
    def code(self, value: grpc.StatusCode) -> None:
        self._code = value


class InvalidInput(HiveMindError):
    pass


class BundleError(InvalidInput):
    """A bundle that is unsafe, malformed or too big; the message says which entry and why."""


class ResultRefused(InvalidInput):
    """The pool will not keep an attempt's result (unsafe to unpack, over the pool's result limit).
    Sending it again cannot help, so a worker does not retry: the pool has already ended the task
    FAILED with this reason."""


class Unauthenticated(HiveMindError):
    pass


class PermissionDenied(HiveMindError):
    pass


class NotFound(HiveMindError):
    pass


class AlreadyExists(HiveMindError):
    pass


class Conflict(HiveMindError):
    """The request does not fit the current state (a stale attempt, a finished task)."""


class RateLimited(HiveMindError):
    pass


class TooLarge(HiveMindError):
    """An upload or a request over one of the pool's size limits."""


class DiskFull(HiveMindError):
    """The pool's disk is full: it cannot store new data now. Retry later; nothing stored was lost."""


class PoolUnavailable(HiveMindError):
    """The pool cannot be reached (down, wrong address, TLS mismatch)."""


class DeadlineExceeded(HiveMindError):
    pass


class Cancelled(HiveMindError):
    pass


class InternalError(HiveMindError):
    pass


@dataclass(frozen=True)
class Status:
    """How one error class travels: as a gRPC status code, and as an HTTP status code at REST."""

    grpc: grpc.StatusCode
    http: int


# The one table. Where two classes share a gRPC code, the first listed is what a status without
# a (known) class name becomes. The HTTP codes are those the Jupyter server answers: it is a gateway
# to the pool, so failures on the pool's side (and anything unexpected) are 502.
STATUS: Mapping[type[HiveMindError], Status] = {
    HiveMindError: Status(grpc.StatusCode.UNKNOWN, 502),
    InvalidInput: Status(grpc.StatusCode.INVALID_ARGUMENT, 400),
    BundleError: Status(grpc.StatusCode.INVALID_ARGUMENT, 400),
    ResultRefused: Status(grpc.StatusCode.INVALID_ARGUMENT, 400),
    Unauthenticated: Status(grpc.StatusCode.UNAUTHENTICATED, 401),
    PermissionDenied: Status(grpc.StatusCode.PERMISSION_DENIED, 403),
    NotFound: Status(grpc.StatusCode.NOT_FOUND, 404),
    AlreadyExists: Status(grpc.StatusCode.ALREADY_EXISTS, 409),
    Conflict: Status(grpc.StatusCode.FAILED_PRECONDITION, 409),
    RateLimited: Status(grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    TooLarge: Status(grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
    DiskFull: Status(grpc.StatusCode.RESOURCE_EXHAUSTED, 507),  # 507 Insufficient Storage
    PoolUnavailable: Status(grpc.StatusCode.UNAVAILABLE, 502),
    DeadlineExceeded: Status(grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    Cancelled: Status(grpc.StatusCode.CANCELLED, 502),
    InternalError: Status(grpc.StatusCode.INTERNAL, 502),
}

# Read from the table: the class a bare status code stands for (first listed wins), and the only
# names accepted from the wire.
_BY_CODE: dict[grpc.StatusCode, type[HiveMindError]] = {
    grpc.StatusCode.OUT_OF_RANGE: InvalidInput,
}
for _cls, _status in STATUS.items():
    _BY_CODE.setdefault(_status.grpc, _cls)
_BY_NAME: dict[str, type[HiveMindError]] = {cls.__name__: cls for cls in STATUS}


def wire_class(error: HiveMindError | type[HiveMindError]) -> type[HiveMindError]:
    """The nearest class in the table: what a subclass (a worker's, the Jupyter side's) travels as."""
    cls = error if isinstance(error, type) else type(error)
    return next((klass for klass in cls.__mro__ if klass in STATUS), HiveMindError)


def status_of(error: HiveMindError | type[HiveMindError]) -> Status:
    """The table's entry for an error or error class (its nearest listed ancestor's)."""
    return STATUS[wire_class(error)]


def http_status(error: HiveMindError) -> int:
    """The HTTP status the REST layer answers with for an error."""
    return status_of(error).http


def _class_name(error: grpc.Call) -> str:
    for key, value in error.trailing_metadata() or ():
        if key == ERROR_KEY:
            return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return ""


def from_rpc_error(error: grpc.RpcError, address: str = "") -> HiveMindError:
    """The HiveMindError for a failed call, with a message a person can act on.

    The class named in the trailing metadata wins when it is one of ours and agrees with the status
    code; otherwise the code decides. A name from the wire is only ever looked up, never imported."""
    if isinstance(error, grpc.Call):
        code, details = error.code(), error.details() or str(error)
        named = _BY_NAME.get(_class_name(error))
    else:
        code, details, named = grpc.StatusCode.UNKNOWN, str(error), None
    cls = named if named is not None and STATUS[named].grpc == code else _BY_CODE.get(code, HiveMindError)
    if cls is PoolUnavailable:
        where = f" at {address}" if address else ""
        details = (
            f"cannot reach the HiveMind pool{where} ({details}). "
            "Check that `hivemind-nodepool serve` is running and the address, port and TLS settings."
        )
    exc = cls(details)
    exc.code = code
    return exc


def status_for(error: HiveMindError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """The status code, message and trailing metadata a server ends a call with for an error."""
    return (
        error.code,
        str(error) or error.__class__.__name__,
        ((ERROR_KEY, wire_class(error).__name__),),
    )
