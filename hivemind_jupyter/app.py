"""The Jupyter server extension: REST + WebSocket under /hivemind/ for the sidebar panel."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from jupyter_server.extension.application import ExtensionApp

from .config import HiveMind
from .handlers import routes
from .pool import PoolConnector
from .stream import TaskFeed

log = logging.getLogger(__name__)


class HiveMindExtension(ExtensionApp):
    """Serves the HiveMind API; the pool credential stays in this process (and its 0600 file)."""

    name = "hivemind_jupyter"
    extension_url = "/hivemind/api/session"
    load_other_extensions = True
    classes = [HiveMind]

    def initialize_settings(self) -> None:
        self.hivemind = HiveMind(parent=self)
        self.connector = PoolConnector(self.hivemind)
        self.executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="hivemind")
        self.feed = TaskFeed(self.connector, self.executor)
        self.settings.update(
            hivemind_settings=self.hivemind,
            hivemind_connector=self.connector,
            hivemind_executor=self.executor,
            hivemind_feed=self.feed,
        )
        self.log.info("HiveMind: pool %s", self.connector.pool_address() or "(not configured yet)")

    def initialize_handlers(self) -> None:
        self.handlers.extend(routes())

    async def stop_extension(self) -> None:
        self.feed.close()
        self.connector.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
