"""What every HiveMind REST handler shares: auth, JSON errors, pool calls off the event loop."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from collections.abc import Callable
from typing import Any, TypeVar, cast

from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web

from hivemind_nodepool.client import PoolClient
from hivemind_nodepool.protocol.errors import HiveMindError, http_status

from ..config import HiveMind
from ..errors import ApiError
from ..pool import PoolConnector

log = logging.getLogger(__name__)

AUTH_RESOURCE = "hivemind"
MAX_BODY_BYTES = 1024 * 1024
INT64_MAX = 2**63 - 1
# A query integer as a person writes one: ASCII digits only (int() also takes other scripts' digits,
# "1_0" and " 5 "),
# and few enough of them that no field it reaches can overflow.
_DECIMAL = re.compile(r"[0-9]{1,19}")
T = TypeVar("T")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


class HiveMindHandler(ExtensionHandlerMixin, APIHandler):
    """Base of the REST handlers: every answer is JSON, errors too."""

    auth_resource = AUTH_RESOURCE

    @property
    def hivemind(self) -> HiveMind:
        return cast(HiveMind, self.settings["hivemind_settings"])

    @property
    def connector(self) -> PoolConnector:
        return cast(PoolConnector, self.settings["hivemind_connector"])

    async def prepare(self) -> None:  # type: ignore[override]
        await super().prepare()
        # Refuse an oversized body for every endpoint, also those that read none, before any work.
        declared = self.request.headers.get("Content-Length", "0")
        if len(self.request.body or b"") > MAX_BODY_BYTES or (
            declared.isdigit() and int(declared) > MAX_BODY_BYTES
        ):
            raise ApiError(413, "the request body is larger than 1 MiB")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            message = exc.message
        elif isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        else:
            message = self._reason
            if status_code >= 500 and exc is not None:
                message = f"{message}: {exc.__class__.__name__}"
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message, "status": status_code}))

    def reply(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def json_body(self, allowed: set[str]) -> dict[str, Any]:
        """The request body as a JSON object with only known fields, or a 400 (413 past 1 MiB)."""
        raw = self.request.body or b""
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, "the request body is larger than 1 MiB")
        try:
            data = json.loads(raw or b"{}", parse_constant=_no_constants)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {str(exc)[:200]}") from None
        except RecursionError:
            raise ApiError(400, "the request body is nested too deeply") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ApiError(
                400, f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
            )
        return data

    def query_int(self, name: str, default: int, low: int, high: int) -> int:
        """A whole-number query argument within [low, high], or a 400 that names it."""
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        if not _DECIMAL.fullmatch(raw):
            raise ApiError(400, f"{name} must be a whole number from {low} to {high}")
        value = int(raw)
        if not low <= value <= high:
            raise ApiError(400, f"{name} must be a whole number from {low} to {high}")
        return value

    def query_text(self, name: str, max_length: int) -> str:
        """A text query argument of at most max_length characters, or a 400."""
        value = self.get_query_argument(name, "")
        if len(value) > max_length:
            raise ApiError(400, f"{name} is longer than {max_length} characters")
        return value

    async def blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking call (a pool RPC, a ZIP) in the extension's threads; map its errors."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self.settings["hivemind_executor"], functools.partial(fn, *args, **kwargs)
            )
        except HiveMindError as exc:
            raise ApiError(http_status(exc), str(exc) or exc.__class__.__name__) from None

    async def pool(self, call: Callable[[PoolClient], T]) -> T:
        """call(client) with the signed-in client, off the event loop."""

        def run() -> T:
            return call(self.connector.client())

        return await self.blocking(run)
