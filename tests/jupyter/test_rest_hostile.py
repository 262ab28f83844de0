"""The REST API under a hostile browser: every parameter swept with hostile values, against a real
pool, answers a 4xx JSON error (or success), never a 500; XSRF guards every mutating endpoint for a
cookie-authenticated caller; cross-origin requests and sockets are refused; huge bodies are refused.
"""

from __future__ import annotations

import json
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from hivemind_nodepool.client import credentials

pytestmark = pytest.mark.slow

HUGE = "9" * 30
# Query-string values a browser can send: overflowing, negative, non-decimal, empty, binary-ish,
# very long, non-ASCII digits.
QUERY_VALUES = [
    HUGE,
    "-" + HUGE,
    "-1",
    "1e3",
    "1.5",
    "nan",
    "inf",
    "0x10",
    "",
    " ",
    "\x00",
    "\u0665",  # ARABIC-INDIC DIGIT FIVE, which int() accepts
    "٩" * 40,
    "é",
    "9" * 5000,
    "a" * 5000,
    "[]",
    "null",
    "RUNNING,QUEUED",
    "running",
]
# JSON values for each body field: wrong types, overflowing numbers, floats at the edge, deep and
# long structures.
JSON_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1.5,
    10**30,
    -(10**30),
    1e308,
    -1e308,
    float("inf"),
    float("nan"),
    "",
    " ",
    "\x00",
    "x" * 20_000,
    "../../etc/passwd",
    "/etc/passwd",
    "nb.ipynb\x00.txt",
    [],
    [1, 2],
    {},
    {"a": 1},
    {"a": {"b": [1, {"c": None}]}},
    {"": ""},
    {"x" * 300: "y"},
    {"ok": "x" * 20_000},
]
# Raw bodies: not JSON, not UTF-8, deeply nested (RecursionError in a JSON parser), JSON's
# non-standard constants, numbers that overflow a float, duplicate keys.
RAW_BODIES = [
    b"",
    b"not json",
    b"\xff\xfe\x00",
    b"[" * 100_000,
    b'{"path": ' + b"[" * 50_000,
    b'{"a": ' * 20_000 + b"1" + b"}" * 20_000,
    b"NaN",
    b'{"cpus": NaN}',
    b'{"cpus": Infinity}',
    b'{"cpus": 1e999}',
    b'{"gpus": 1' + b"0" * 5000 + b"}",
    b'{"path": "nb.ipynb", "path": 5}',
    b"null",
    b"[]",
    b'"text"',
    b"5",
]
SUBMIT_FIELDS = [
    "path",
    "entry",
    "name",
    "cpus",
    "memory",
    "gpus",
    "parameters",
    "timeout",
    "labels",
    "retries",
    "requirements",
    "environment",
    "image",
    "python",
]
TASK_IDS = ["..", "%2e%2e", "a" * 200, "t\x00", "é", " ", "t-" + "9" * 100, "t%2F..%2Fx", "-", "."]


def assert_clean(status: int, body: Any, what: object) -> None:
    """A JSON answer that is not a server error; an error names itself."""
    shown = (repr(what)[:200], status, repr(body)[:300])
    assert status < 500, shown
    if status >= 400:
        assert isinstance(body, dict) and body.get("error") and body.get("status") == status, shown


@pytest.fixture
def project(jp_root_dir: Path) -> Path:
    (jp_root_dir / "nb.ipynb").write_text(json.dumps(NOTEBOOK))
    (jp_root_dir / "folder").mkdir()
    (jp_root_dir / "folder" / "main.ipynb").write_text(json.dumps(NOTEBOOK))
    return jp_root_dir


NOTEBOOK = {
    "cells": [
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "a",
            "metadata": {},
            "outputs": [],
            "source": "x = 1",
        }
    ],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    "nbformat": 4,
    "nbformat_minor": 5,
}


def test_hostile_query_values_never_reach_a_500(api, signed_in, project: Path):
    status, task = api("POST", "tasks", body={"path": "nb.ipynb", "memory": "256M"})
    assert status == 201, task
    swept = 0
    for path, names in [
        (("tasks",), ["state", "limit", "page_token"]),
        (("tasks", task["id"], "events"), ["after", "limit"]),
    ]:
        for name in names:
            for value in QUERY_VALUES:
                status, body = api("GET", *path, params={name: value})
                assert_clean(status, body, (path, name, value))
                swept += 1
    # the value from the issue: a 30-digit `after`
    status, body = api("GET", "tasks", task["id"], "events", params={"after": "9" * 30})
    assert status == 400 and "after" in body["error"], body
    assert swept > 90


def test_hostile_task_ids_never_reach_a_500(api, signed_in):
    for task_id in TASK_IDS:
        for method, tail in [
            ("GET", ()),
            ("POST", ("cancel",)),
            ("POST", ("retry",)),
            ("POST", ("result",)),
            ("GET", ("events",)),
        ]:
            status, body = api(method, "tasks", task_id, *tail)
            assert_clean(status, body, (task_id, tail))
            assert status in (400, 404), (task_id, tail, status, body)


def test_hostile_submit_bodies_never_reach_a_500(api, signed_in, project: Path):
    base = {"path": "nb.ipynb", "memory": "256M"}
    for field in SUBMIT_FIELDS:
        for value in JSON_VALUES:
            body = {**base, field: value}
            status, answer = api("POST", "tasks", body=json.dumps(body))
            assert_clean(status, answer, (field, repr(value)[:80]))
    for raw in RAW_BODIES:
        status, answer = api("POST", "tasks", body=raw)
        assert_clean(status, answer, raw[:40])
        assert 400 <= status < 500, (raw[:40], status, answer)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"environment": "conda"}, "environment must be auto, none, freeze, requirements or image"),
        ({"environment": "image"}, "environment image needs the image's name"),
        ({"environment": "requirements"}, "environment requirements needs the file"),
        ({"environment": "none", "image": "lab/x"}, "environment none and image contradict"),
        ({"image": "Not An Image"}, "is not an image name"),
        ({"image": "lab/x", "requirements": "numpy"}, "not both"),
        ({"python": "3.x"}, "python: '3.x' is not a Python version"),
        ({"python": "3" * 2000}, "python is longer than 1024 characters"),
        ({"requirements": "-e ./mine"}, "-e is not allowed"),
        ({"requirements": "numpy\n-r more.txt"}, "-r is not allowed"),
        ({"requirements": "--index-url https://mirror.example/simple"}, "--index-url is not allowed"),
        ({"requirements": "numpy --hash=sha256:00ff"}, "hash is 4 hex digits long"),
        ({"requirements": "evil/pkg==1"}, "is a path or URL"),
        ({"requirements": "\n".join(f"p{i}==1" for i in range(5000))}, "more than 2000 packages"),
    ],
)
def test_bad_environment_fields_are_400s_that_say_why(api, signed_in, project: Path, fields, message):
    status, answer = api("POST", "tasks", body={"path": "nb.ipynb", "memory": "256M", **fields})
    assert status == 400 and message in answer["error"], answer


def test_the_environment_follows_the_notebooks_kernel(api, signed_in, project: Path):
    status, task = api("POST", "tasks", body={"path": "nb.ipynb", "memory": "256M"})
    assert status == 201, task  # the python3 kernelspec runs this server's Python: captured here
    assert task["manifest"]["environment"]["mode"] == "auto"
    assert task["manifest"]["environment"]["summary"] == "no packages beyond the runtime"
    assert task["notices"] == []  # `x = 1` needs nothing: no line about it
    other = {**NOTEBOOK, "metadata": {"kernelspec": {"name": "lab-conda-env", "display_name": "conda"}}}
    (project / "other").mkdir()
    (project / "other" / "nb.ipynb").write_text(json.dumps(other))
    status, task = api("POST", "tasks", body={"path": "other/nb.ipynb", "memory": "256M"})
    assert status == 201 and task["manifest"]["environment"]["mode"] == "none", task
    assert "not this server's Python and its folder has no requirements.txt" in task["notices"][0]
    (project / "other" / "requirements.txt").write_text("numpy==2.1.0\n")
    status, task = api("POST", "tasks", body={"path": "other/nb.ipynb", "memory": "256M"})
    assert status == 201 and task["manifest"]["environment"]["mode"] == "requirements", task
    assert "its packages come from the folder's requirements.txt" in task["notices"][0]
    status, task = api(
        "POST", "tasks", body={"path": "other/nb.ipynb", "environment": "freeze", "python": "3.12"}
    )
    assert status == 201 and task["manifest"]["environment"]["mode"] == "freeze", task
    assert task["manifest"]["environment"]["python_version"] == "3.12"


def test_hostile_session_bodies_never_reach_a_500(api, signed_in):
    pool_address = signed_in.address
    for field in ("username", "password"):
        for value in JSON_VALUES:
            body = {"pool": pool_address, "username": "ada", "password": "wrong-password", field: value}
            status, answer = api("POST", "session", body=json.dumps(body))
            assert_clean(status, answer, (field, repr(value)[:80]))
            assert 400 <= status < 500, (field, repr(value)[:80], status, answer)
    # pool addresses that no resolver or channel can take: refused before any connection attempt
    for value in [
        "\x00",
        "x" * 20_000,
        "host:99999999999999999999",
        "host:-1",
        "[::1",
        ":::",
        " ",
        "a b:1",
        5,
        [],
        {},
    ]:
        body = {"pool": value, "username": "ada", "password": "wrong-password"}
        status, answer = api("POST", "session", body=json.dumps(body))
        assert_clean(status, answer, ("pool", repr(value)[:80]))
        assert status == 400, (repr(value)[:80], status, answer)
    for raw in RAW_BODIES:
        status, answer = api("POST", "session", body=raw)
        assert_clean(status, answer, raw[:40])
        assert 400 <= status < 500, (raw[:40], status, answer)


def test_bodies_on_endpoints_without_fields(api, signed_in, project: Path):
    status, task = api("POST", "tasks", body={"path": "nb.ipynb", "memory": "256M"})
    assert status == 201
    for tail in ("cancel", "retry", "result"):
        for raw in [b"[" * 100_000, b"not json", b'{"x": 1}', b"x" * (2 * 1024 * 1024)]:
            status, answer = api("POST", "tasks", task["id"], tail, body=raw)
            assert_clean(status, answer, (tail, raw[:20]))
            assert status in (400, 413), (tail, raw[:20], status, answer)


@pytest.mark.parametrize("path", [("session",), ("tasks",), ("tasks", "t1", "cancel")])
def test_huge_bodies_are_413(api, hivemind_config_dir: Path, path):
    status, answer = api("POST", *path, body=json.dumps({"username": "a" * 2_000_000}))
    assert status == 413 and answer["status"] == 413 and "1 MiB" in answer["error"], answer


# -- cross-site requests: XSRF and Origin, with cookie authentication -----------------------------


def _cookies(response: Any) -> dict[str, str]:
    jar: dict[str, str] = {}
    for line in response.headers.get_list("Set-Cookie"):
        parsed: SimpleCookie = SimpleCookie()
        parsed.load(line)
        jar.update({key: morsel.value for key, morsel in parsed.items()})
    return jar


class Browser:
    """Requests as a browser sends them: the Jupyter login cookie (set by opening the server's
    URL with ?token=, as a person does), never the token header."""

    def __init__(self, jp_fetch: Any, loop: Any, token: str) -> None:
        self.fetch_ = jp_fetch
        self.loop = loop
        opened = self.fetch("GET", ("api", "status"), params={"token": token})
        self.login = _cookies(opened)
        assert self.login, "opening the server with ?token= set no login cookie"
        # a page the server renders hands out the _xsrf cookie, as JupyterLab's page does
        page = self.fetch("GET", ("login",))
        self.xsrf = _cookies(page).get("_xsrf") or _cookies(opened).get("_xsrf")
        assert self.xsrf, "no _xsrf cookie was handed out"

    def fetch(
        self,
        method: str,
        path: tuple[str, ...],
        body: str | None = None,
        cookies: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        sent = {"Authorization": "", **(headers or {})}
        if cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        if body is None and method == "POST":
            body = ""
        return self.loop.run_until_complete(
            self.fetch_(
                *path,
                method=method,
                body=body,
                headers=sent,
                params=params,
                raise_error=False,
                follow_redirects=False,
            )
        )


MUTATING = [
    ("POST", ("session",), {"username": "a", "password": "b"}),
    ("POST", ("tasks",), {"path": "nb.ipynb"}),
    ("POST", ("tasks", "t1", "cancel"), {}),
    ("POST", ("tasks", "t1", "retry"), {}),
    ("POST", ("tasks", "t1", "result"), {}),
    ("DELETE", ("session",), None),
]


def test_xsrf_guards_every_mutating_endpoint(
    jp_fetch, jp_serverapp, jp_asyncio_loop, hivemind_config_dir: Path, jp_root_dir: Path
):
    """A page on another site can make the browser send the Jupyter cookie, but cannot read the
    _xsrf cookie: a cookie-authenticated request without a matching X-XSRFToken is refused with
    403 and does nothing; the same request with it goes through."""
    saved = credentials.Credential(pool="127.0.0.1:1", user="ada", token="x" * 40, expires_at=0)
    credentials.save(saved, hivemind_config_dir)
    (jp_root_dir / "nb.ipynb").write_text(json.dumps(NOTEBOOK))
    browser = Browser(jp_fetch, jp_asyncio_loop, jp_serverapp.identity_provider.token)
    with_xsrf = {**browser.login, "_xsrf": browser.xsrf}
    for method, tail, body in MUTATING:
        path = ("hivemind", "api", *tail)
        data = None if body is None else json.dumps(body)
        forged = browser.fetch(method, path, data, cookies=browser.login)
        assert forged.code == 403, (method, path, forged.code, forged.body)
        assert "xsrf" in forged.body.decode().lower(), forged.body
        wrong = browser.fetch(method, path, data, cookies=with_xsrf, headers={"X-XSRFToken": "forged"})
        assert wrong.code == 403, (method, path, wrong.code)
        assert credentials.load(hivemind_config_dir) == saved  # the forged DELETE signed nobody out
        genuine = browser.fetch(method, path, data, cookies=with_xsrf, headers={"X-XSRFToken": browser.xsrf})
        assert genuine.code != 403, (method, path, genuine.code, genuine.body)
        assert genuine.code == 204 or json.loads(genuine.body)["error"], (method, path, genuine.body)
    assert credentials.load(hivemind_config_dir) is None  # the genuine DELETE did


def test_cross_origin_requests_and_sockets_are_refused(
    jp_fetch, jp_serverapp, jp_asyncio_loop, jp_http_port, jp_base_url, hivemind_config_dir: Path
):
    browser = Browser(jp_fetch, jp_asyncio_loop, jp_serverapp.identity_provider.token)
    cookies = {**browser.login, "_xsrf": browser.xsrf}
    evil = {"Origin": "http://evil.example", "X-XSRFToken": browser.xsrf}
    read = browser.fetch("GET", ("hivemind", "api", "session"), cookies=cookies, headers=evil)
    write = browser.fetch(
        "POST", ("hivemind", "api", "tasks", "t1", "cancel"), "{}", cookies=cookies, headers=evil
    )
    assert read.code in (403, 404) and write.code in (403, 404), (read.code, write.code)
    same_site = browser.fetch("GET", ("hivemind", "api", "session"), cookies=cookies)
    assert same_site.code == 200

    def connect(origin: str | None) -> str:
        headers = {"Authorization": "", "Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())}
        if origin:
            headers["Origin"] = origin
        # the host the login cookie was issued for (its name carries it)
        url = f"ws://127.0.0.1:{jp_http_port}{jp_base_url}hivemind/api/stream"
        try:
            socket = jp_asyncio_loop.run_until_complete(websocket_connect(HTTPRequest(url, headers=headers)))
        except HTTPClientError as exc:
            return str(exc.code)
        socket.close()
        return "opened"

    assert connect("http://evil.example") in ("403", "404")
    assert connect(None) == "opened"  # the same cookie from the page's own origin is served


def test_hostile_socket_messages_get_error_replies(
    api, signed_in, project: Path, jp_ws_fetch, jp_asyncio_loop
):
    """The WebSocket's messages are checked like the REST parameters: each hostile one gets an
    error reply, and the socket keeps serving (a valid subscription still works afterwards)."""
    run = jp_asyncio_loop.run_until_complete
    status, task = api("POST", "tasks", body={"path": "nb.ipynb", "memory": "256M"})
    assert status == 201
    socket = run(jp_ws_fetch("hivemind", "api", "stream"))
    hostile = [
        {"subscribe": task["id"], "after": 10**30},
        {"subscribe": task["id"], "after": 2**63},
        {"subscribe": task["id"], "after": 1.5},
        {"subscribe": task["id"], "after": "0"},
        {"subscribe": "x" * 1000},
        {"subscribe": None},
        {"subscribe": ["t1"]},
        {"unsubscribe": 5},
        {"bogus": 1},
        [1, 2],
        "[" * 50_000,
        "x" * 100_000,
    ]
    for message in hostile:
        socket.write_message(message if isinstance(message, str) else json.dumps(message))
    errors = 0
    while errors < len(hostile):
        reply = json.loads(run(socket.read_message()))
        if reply["type"] == "error":
            assert 400 <= reply["status"] < 500 and reply["error"], reply
            errors += 1
    socket.write_message(json.dumps({"subscribe": task["id"], "after": 0}))
    while True:
        reply = json.loads(run(socket.read_message()))
        assert reply["type"] != "error", reply
        if reply["type"] == "event" and reply["task_id"] == task["id"]:
            break
    socket.close()
