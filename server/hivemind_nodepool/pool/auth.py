"""Who is calling: passwords, API tokens, worker credentials, the login rate limit, the open
streams that end when their caller's access is taken away, and the one server interceptor that
authenticates every RPC except Login, Register, health and reflection."""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import logging
import re
import secrets
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import bcrypt
import grpc

from hivemind_nodepool.pool.rpc import abort_with_error
from hivemind_nodepool.pool.store import Store
from hivemind_nodepool.protocol.errors import (
    HiveMindError,
    InvalidInput,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
)
from hivemind_nodepool.protocol.rejoin import credential_hash

log = logging.getLogger(__name__)

# An interceptor sees every method's messages; the stubs' generic base is not subscriptable at run time.
if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor


BCRYPT_ROUNDS = 12
TOKEN_BYTES = 32  # 256 random bits
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_PASSWORD_BYTES = 72  # bcrypt ignores anything past 72 bytes; refuse rather than truncate
MIN_PASSWORD_LENGTH = 8
LOGIN_FAILURES = 5  # per user name, within LOGIN_WINDOW
SOURCE_FAILURES = 10  # per source address (IPv6: per /64), whatever the names tried
LOGIN_WINDOW = 60.0
MAX_LIMITER_KEYS = 100_000

PUBLIC_METHODS = frozenset(
    {
        "/hivemind.nodepool.v1.NodePool/Login",
        "/hivemind.nodepool.v1.WorkerGateway/Register",
    }
)
PUBLIC_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
WORKER_SERVICE = "/hivemind.nodepool.v1.WorkerGateway/"
WORKER_REVOKED = "an admin revoked this worker's credential"


@dataclass(frozen=True)
class Principal:
    kind: str  # "user" or "worker"
    name: str  # user name, or worker id
    admin: bool = False
    token_hash: str = ""

    @property
    def is_worker(self) -> bool:
        return self.kind == "worker"


_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "hivemind_principal", default=None
)


def current() -> Principal:
    principal = _current.get()
    if principal is None:  # the interceptor guarantees one; reaching here is a wiring bug
        raise Unauthenticated("not signed in")
    return principal


def current_user() -> Principal:
    principal = current()
    if principal.is_worker:
        raise PermissionDenied("a worker credential cannot call user methods")
    return principal


def current_admin() -> Principal:
    principal = current_user()
    if not principal.admin:
        raise PermissionDenied("this needs an admin account")
    return principal


def current_worker() -> Principal:
    principal = current()
    if not principal.is_worker:
        raise PermissionDenied("only workers call the worker gateway")
    return principal


# -- secrets ------------------------------------------------------------------------------------


def hash_secret(secret: str) -> str:
    """Tokens are high-entropy, so a plain sha256 is the right stored form (no salt needed); the
    same form a rejoining worker's proof is built on."""
    return credential_hash(secret)


def new_token(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(TOKEN_BYTES)}"


def check_user_name(name: str) -> None:
    if not USER_NAME.match(name or ""):
        raise InvalidInput(
            "a user name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"the password is too short (at least {MIN_PASSWORD_LENGTH} characters)")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise InvalidInput(f"the password is too long (at most {MAX_PASSWORD_BYTES} bytes)")


def hash_password(password: str, rounds: int = BCRYPT_ROUNDS) -> str:
    check_password(password)
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=max(rounds, BCRYPT_ROUNDS))).decode()


def password_matches(password: str, stored_hash: str) -> bool:
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        return False
    try:
        return bcrypt.checkpw(password.encode(), stored_hash.encode())
    except ValueError:
        return False


# A real hash to compare against when the user does not exist, so timing does not reveal names.
_DUMMY_HASH = bcrypt.hashpw(b"not-a-password", bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode()


def login_source(peer: str) -> str:
    """The address a sign-in came from, as the per-source limit counts it: the IP without its
    port, an IPv6 address as its /64 (one host can pick any address in it)."""
    kind, _, rest = (peer or "").partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        host = rest.rsplit(":", 1)[0].strip("[]")
        try:
            return str(ipaddress.ip_network(f"{host}/64", strict=False))
        except ValueError:
            return host
    return kind or "unknown"  # a unix socket: every caller shares it


class LoginLimiter:
    """Five failures for one name within a minute, or ten from one source whatever the names:
    refused until the oldest failure ages out.

    Memory answers; the store keeps a copy of recent failures (stored before the refusal is sent) so
    a pool restart does not hand an attacker a fresh allowance. A success clears its name's count,
    never its source's: one good account must not reset a source that guesses other names."""

    def __init__(
        self,
        store: Store | None = None,
        failures: int = LOGIN_FAILURES,
        window: float = LOGIN_WINDOW,
        source_failures: int = SOURCE_FAILURES,
    ) -> None:
        self.store = store
        self.failures = failures
        self.source_failures = source_failures
        self.window = window
        self._seen: dict[str, deque[float]] = {}
        self._sources: dict[str, deque[float]] = {}
        if store is not None:
            self._load(store)

    def _load(self, store: Store) -> None:
        """Failures from before a restart, moved from wall-clock time onto this run's monotonic clock."""
        wall, mono = time.time(), time.monotonic()
        for row in store.recent_login_failures(wall - self.window):
            at = mono - (wall - float(row["at"]))
            if row["name"]:
                self._seen.setdefault(row["name"], deque()).append(at)
            if row["source"]:
                self._sources.setdefault(row["source"], deque()).append(at)

    def _recent(self, table: dict[str, deque[float]], key: str, now: float) -> deque[float]:
        times = table.setdefault(key, deque())
        while times and times[0] < now - self.window:
            times.popleft()
        return times

    def check(self, name: str, source: str = "") -> None:
        now = time.monotonic()
        times = self._recent(self._seen, name, now)
        if len(times) >= self.failures:
            wait = max(1, int(times[0] + self.window - now) + 1)
            raise RateLimited(f"too many failed sign-ins for {name!r}; try again in {wait} s")
        if source:
            times = self._recent(self._sources, source, now)
            if len(times) >= self.source_failures:
                wait = max(1, int(times[0] + self.window - now) + 1)
                raise RateLimited(f"too many failed sign-ins from your address; try again in {wait} s")

    def failed(self, name: str, source: str = "") -> None:
        now = time.monotonic()
        for table, key in ((self._seen, name), (self._sources, source)):
            if not key:
                continue
            self._recent(table, key, now).append(now)
            if len(table) > MAX_LIMITER_KEYS:  # bound memory under a flood of made-up names
                for stale in [k for k, times in table.items() if not times or times[-1] < now - self.window]:
                    del table[stale]
                if len(table) > MAX_LIMITER_KEYS:
                    table.clear()

    def succeeded(self, name: str) -> None:
        if self._seen.pop(name, None) is not None and self.store is not None:
            self.store.clear_login_failures(name)


class OpenStream:
    """A long call's hold on its caller's access: ended (its error set, its callbacks run) when
    that access is taken away, by a revocation in this process or by the periodic recheck."""

    def __init__(self, principal: Principal, needs_admin: bool) -> None:
        self.principal = principal
        self.needs_admin = needs_admin  # it shows other users' tasks: only while still an admin
        self.error: HiveMindError | None = None
        self._callbacks: list[Callable[[], None]] = []

    def on_end(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def end(self, error: HiveMindError) -> None:
        if self.error is not None:
            return
        self.error = error
        for callback in self._callbacks:
            try:
                callback()
            except Exception:  # one stream's wake-up must not stop the others' ending
                log.exception("ending a stream failed")

    def check(self) -> None:
        """Raise the stream's error once it was ended: call before sending anything."""
        if self.error is not None:
            raise self.error


REVOKED = "your sign-in was revoked: sign in again (`hivemind login`)"
DISABLED = "your account was disabled by an admin; your sign-in was revoked"
EXPIRED = "your token has expired: sign in again (`hivemind login`)"
NO_LONGER_ADMIN = "your account is no longer an admin"


class Authenticator:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.limiter = LoginLimiter(store)
        self.streams: set[OpenStream] = set()

    async def login(self, name: str, password: str, ttl: float, source: str = "") -> tuple[str, float, Any]:
        """(token, expires_at, user row) or an error; bcrypt runs off the event loop."""
        self.limiter.check(name, source)
        row = self.store.get_user(name) if USER_NAME.match(name or "") else None
        stored = row["password_hash"] if row is not None else _DUMMY_HASH
        ok = await asyncio.to_thread(password_matches, password, stored)
        if row is None or not ok or row["disabled"]:
            self.limiter.failed(name, source)
            await self.store.record_login_failure(name, source, time.time(), self.limiter.window)
            raise Unauthenticated("wrong user name or password, or the account is disabled")
        self.limiter.succeeded(name)
        token = new_token("hmu")
        expires_at = time.time() + ttl
        await self.store.add_token(hash_secret(token), name, expires_at)
        return token, expires_at, row

    def authenticate(self, token: str, worker_call: bool) -> Principal:
        token_hash = hash_secret(token)
        if worker_call:
            worker = self.store.get_worker_by_credential(token_hash)
            if worker is None:
                raise Unauthenticated("unknown worker credential; register the worker again")
            if worker["revoked_at"]:
                raise Unauthenticated(WORKER_REVOKED)
            return Principal("worker", worker["id"], token_hash=token_hash)
        row = self.store.get_token(token_hash)
        if row is None:
            worker = self.store.get_worker_by_credential(token_hash)
            if worker is not None and not worker["revoked_at"]:
                # a worker on a user method: the method says PERMISSION_DENIED
                return Principal("worker", worker["id"], token_hash=token_hash)
            raise Unauthenticated("unknown token: sign in again (`hivemind login`)")
        if row["revoked"]:
            raise Unauthenticated("this token was revoked: sign in again (`hivemind login`)")
        if row["expires_at"] < time.time():
            raise Unauthenticated("this token has expired: sign in again (`hivemind login`)")
        if row["disabled"]:
            raise Unauthenticated(f"the account {row['user']!r} is disabled")
        return Principal("user", row["user"], admin=bool(row["admin"]), token_hash=token_hash)

    def recheck(self, principal: Principal) -> None:
        """Unauthenticated once the caller's token was revoked (sign-out, a disabled account) or
        expired after the call began: for a call about to commit a change (a long submission)."""
        error = _access_lost(self.store.get_token(principal.token_hash), False, time.time())
        if error is not None:
            raise error

    # -- open streams ---------------------------------------------------------------------------

    @contextmanager
    def hold(self, principal: Principal, needs_admin: bool = False) -> Iterator[OpenStream]:
        """Register a user's long stream for as long as it is open; see OpenStream."""
        stream = OpenStream(principal, needs_admin)
        self.streams.add(stream)
        try:
            yield stream
        finally:
            self.streams.discard(stream)

    def end_streams(self, match: Callable[[OpenStream], bool], error: HiveMindError) -> int:
        ended = 0
        for stream in list(self.streams):
            if stream.error is None and match(stream):
                stream.end(error)
                ended += 1
        return ended

    def user_disabled(self, name: str) -> int:
        """The account was disabled here: its open streams end now."""
        ended = self.end_streams(lambda s: s.principal.name == name, Unauthenticated(DISABLED))
        if ended:
            log.info("ended %d open stream(s) of disabled user %s", ended, name)
        return ended

    def token_revoked(self, token_hash: str) -> int:
        return self.end_streams(lambda s: s.principal.token_hash == token_hash, Unauthenticated(REVOKED))

    def recheck_streams(self) -> int:
        """Every open stream against the store, in one query: this catches expiry, and changes
        made by another process (`hivemind-nodepool user disable --data-dir`)."""
        streams = [s for s in self.streams if s.error is None]
        if not streams:
            return 0
        rows = self.store.token_states({s.principal.token_hash for s in streams})
        now = time.time()
        ended = 0
        for stream in streams:
            error = _access_lost(rows.get(stream.principal.token_hash), stream.needs_admin, now)
            if error is not None:
                stream.end(error)
                ended += 1
        return ended


def _access_lost(row: sqlite3.Row | None, needs_admin: bool, now: float) -> HiveMindError | None:
    """Why a token's row (with its user's admin and disabled) no longer admits its caller, if so."""
    if row is None or row["revoked"] or row["disabled"]:
        return Unauthenticated(DISABLED if row is not None and row["disabled"] else REVOKED)
    if row["expires_at"] < now:
        return Unauthenticated(EXPIRED)
    if needs_admin and not row["admin"]:
        return PermissionDenied(NO_LONGER_ADMIN)
    return None


def bearer_token(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class AuthInterceptor(_Interceptor):
    """Wraps every protected handler: authenticate first, then run it with the principal set."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in PUBLIC_METHODS or method.startswith(PUBLIC_PREFIXES):
            return handler
        worker_call = method.startswith(WORKER_SERVICE)
        token = bearer_token(handler_call_details.invocation_metadata)
        authenticator = self.authenticator

        def who() -> Principal:
            if token is None:
                raise Unauthenticated(
                    "sign in first: this call needs `authorization: Bearer <token>` (run `hivemind login`)"
                )
            return authenticator.authenticate(token, worker_call)

        return _wrap(handler, who)


async def _admitted(context: grpc.aio.ServicerContext[Any, Any], who: Callable[[], Principal]) -> bool:
    """Set the caller's principal for the handler (in this call's context); False, with the call
    aborted, when who refuses the caller."""
    try:
        principal = who()
    except HiveMindError as exc:
        await abort_with_error(context, exc)
        return False
    _current.set(principal)
    return True


def _wrap(
    handler: grpc.RpcMethodHandler[Any, Any], who: Callable[[], Principal]
) -> grpc.RpcMethodHandler[Any, Any]:
    if handler.unary_unary or handler.stream_unary:
        inner: Any = handler.unary_unary or handler.stream_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if not await _admitted(context, who):
                return None
            return await inner(request, context)

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )
        return grpc.stream_unary_rpc_method_handler(
            unary, handler.request_deserializer, handler.response_serializer
        )

    inner_stream: Any = handler.unary_stream or handler.stream_stream

    async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if not await _admitted(context, who):
            return
        async for item in inner_stream(request, context):
            yield item

    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            streaming, handler.request_deserializer, handler.response_serializer
        )
    return grpc.stream_stream_rpc_method_handler(
        streaming, handler.request_deserializer, handler.response_serializer
    )
