"""/hivemind/api/session: who is signed in to the pool; sign in; sign out."""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from hivemind_nodepool.protocol.errors import HiveMindError, PoolUnavailable, Unauthenticated

from ..errors import ApiError
from .base import HiveMindHandler


class SessionHandler(HiveMindHandler):
    def _status(self) -> dict[str, Any]:
        """Blocking: the session as the panel shows it (the token itself never leaves the server)."""
        saved = self.connector.credential()
        answer: dict[str, Any] = {
            "signed_in": False,
            "user": None,
            "admin": False,
            "pool": self.connector.pool_address(),
        }
        if saved is None or saved.expired:
            return answer
        try:
            user = self.connector.client().whoami()
        except Unauthenticated:
            return answer
        except PoolUnavailable:
            answer.update(signed_in=True, user=saved.user, reachable=False)
            return answer
        answer.update(signed_in=True, user=user.name or saved.user, admin=bool(user.admin))
        return answer

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply(await self.blocking(self._status))

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body({"pool", "username", "password"})
        for key in body:
            if not isinstance(body[key], str):
                raise ApiError(400, f"{key} must be a string")
        username = body.get("username", "").strip()
        password = body.get("password", "")
        if not username or not password:
            raise ApiError(400, "give both a username and a password")
        try:
            await self.blocking(self.connector.sign_in, username, password, body.get("pool"))
        except ApiError as exc:
            if exc.status_code == 401:
                raise ApiError(401, "wrong username or password for the HiveMind pool") from None
            raise
        self.settings["hivemind_feed"].credential_changed()
        self.reply(await self.blocking(self._status))

    @web.authenticated
    @authorized
    async def delete(self) -> None:
        self.settings["hivemind_feed"].credential_changing()
        try:
            await self.blocking(self.connector.sign_out)
        except HiveMindError as exc:  # signing out locally cannot fail on the pool's account
            self.log.info("sign-out: %s", exc)
        self.settings["hivemind_feed"].credential_changed()
        self.set_status(204)
        self.finish()
