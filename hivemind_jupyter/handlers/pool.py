"""/hivemind/api/workers and /hivemind/api/pool: what the pool has."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from hivemind_nodepool.protocol.jsonify import to_dict

from .base import HiveMindHandler


class WorkersHandler(HiveMindHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        workers = await self.pool(lambda client: client.list_workers())
        self.reply({"workers": [to_dict(worker, every_field=True) for worker in workers]})


class PoolStatusHandler(HiveMindHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        status = await self.pool(lambda client: client.pool_status())
        self.reply(to_dict(status, every_field=True))
