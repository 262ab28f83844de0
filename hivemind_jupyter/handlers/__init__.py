"""The REST handlers, one module per resource; `routes()` lists them for the extension app."""

from __future__ import annotations

from typing import Any

from . import pool, session, tasks


def routes() -> list[tuple[str, Any]]:
    """(path pattern under the base URL, handler class) for every REST endpoint."""
    from ..stream import StreamHandler

    task_id = r"(?P<task_id>[^/]+)"
    return [
        (r"/hivemind/api/session", session.SessionHandler),
        (r"/hivemind/api/tasks", tasks.TasksHandler),
        (rf"/hivemind/api/tasks/{task_id}", tasks.TaskHandler),
        (rf"/hivemind/api/tasks/{task_id}/cancel", tasks.CancelHandler),
        (rf"/hivemind/api/tasks/{task_id}/retry", tasks.RetryHandler),
        (rf"/hivemind/api/tasks/{task_id}/result", tasks.ResultHandler),
        (rf"/hivemind/api/tasks/{task_id}/events", tasks.EventsHandler),
        (r"/hivemind/api/workers", pool.WorkersHandler),
        (r"/hivemind/api/pool", pool.PoolStatusHandler),
        (r"/hivemind/api/stream", StreamHandler),
    ]
