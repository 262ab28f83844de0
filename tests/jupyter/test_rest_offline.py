"""The REST API where no pool is needed: auth, bad bodies, not signed in, a pool that is down."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from hivemind_nodepool.client import credentials


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_session_when_signed_out(api):
    status, body = api("GET", "session")
    assert status == 200
    assert body == {"signed_in": False, "user": None, "admin": False, "pool": None}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", ("session",)),
        ("GET", ("tasks",)),
        ("GET", ("tasks", "t1")),
        ("GET", ("workers",)),
        ("GET", ("pool",)),
        ("POST", ("tasks",)),
        ("POST", ("tasks", "t1", "cancel")),
        ("POST", ("tasks", "t1", "result")),
        ("GET", ("tasks", "t1", "events")),
        ("DELETE", ("session",)),
    ],
)
def test_unauthenticated_requests_are_refused(api, method, path):
    status, body = api(method, *path, body={} if method == "POST" else None, headers={"Authorization": ""})
    assert status == 403
    assert body["status"] == 403 and body["error"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", ("tasks",), None),
        ("GET", ("tasks", "t1"), None),
        ("GET", ("workers",), None),
        ("GET", ("pool",), None),
        ("POST", ("tasks", "t1", "cancel"), {}),
        ("POST", ("tasks", "t1", "retry"), {}),
        ("POST", ("tasks", "t1", "result"), {}),
        ("GET", ("tasks", "t1", "events"), None),
    ],
)
def test_not_signed_in_is_401_with_advice(api, method, path, body):
    status, answer = api(method, *path, body=body)
    assert status == 401
    assert "sign in" in answer["error"]


def test_submit_not_signed_in_is_401(api, jp_root_dir: Path):
    (jp_root_dir / "nb.ipynb").write_text("{}")
    status, _answer = api("POST", "tasks", body={"path": "nb.ipynb"})
    assert status == 401


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[1, 2]",
        "null",
        '"text"',
        json.dumps({"username": "a"}),
        json.dumps({"username": "a", "password": "b", "extra": 1}),
        json.dumps({"username": 5, "password": "b"}),
        json.dumps({"username": "a", "password": ""}),
    ],
)
def test_sign_in_bad_bodies_are_400(api, body):
    status, answer = api("POST", "session", body=body)
    assert status == 400, answer
    assert answer["error"]


def test_sign_in_without_a_pool_address_is_400(api):
    status, answer = api("POST", "session", body={"username": "a", "password": "b"})
    assert status == 400
    assert "pool" in answer["error"]


def test_sign_in_to_a_pool_that_is_down_is_502(api):
    address = f"127.0.0.1:{free_port()}"
    status, answer = api("POST", "session", body={"pool": address, "username": "a", "password": "b"})
    assert status == 502
    assert address in answer["error"]


def test_signed_in_but_pool_down(api, hivemind_config_dir: Path):
    address = f"127.0.0.1:{free_port()}"
    credentials.save(
        credentials.Credential(pool=address, user="ada", token="x" * 40, expires_at=0), hivemind_config_dir
    )
    status, body = api("GET", "session")
    assert status == 200
    assert body["signed_in"] is True and body["user"] == "ada" and body["reachable"] is False
    assert "token" not in json.dumps(body)
    for path in (("tasks",), ("workers",), ("pool",), ("tasks", "t1")):
        status, answer = api("GET", *path)
        assert status == 502, path
        assert "cannot reach" in answer["error"]
    status, _ = api("DELETE", "session")
    assert status == 204
    assert credentials.load(hivemind_config_dir) is None


@pytest.mark.parametrize("query", [{"state": "BOGUS"}, {"limit": "0"}, {"limit": "x"}, {"limit": "501"}])
def test_list_bad_queries_are_400(api, hivemind_config_dir: Path, query):
    credentials.save(
        credentials.Credential(pool=f"127.0.0.1:{free_port()}", user="ada", token="x", expires_at=0),
        hivemind_config_dir,
    )
    status, answer = api("GET", "tasks", params=query)
    assert status == 400, answer


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"path": ""},
        {"path": "/etc/passwd"},
        {"path": "../outside"},
        {"path": "missing.ipynb"},
        {"path": "nb.ipynb", "cpus": "many"},
        {"path": "nb.ipynb", "cpus": -1},
        {"path": "nb.ipynb", "gpus": 1.5},
        {"path": "nb.ipynb", "memory": "lots"},
        {"path": "nb.ipynb", "timeout": "soon"},
        {"path": "nb.ipynb", "parameters": [1]},
        {"path": "nb.ipynb", "labels": {"a": 1}},
        {"path": "nb.ipynb", "bogus": 1},
        {"path": "nb.ipynb", "entry": "x.ipynb"},
        {"path": "data.txt"},
        {"path": "folder"},
        {"path": "folder", "entry": "../nb.ipynb"},
        {"path": "nb.ipynb", "parameters": {"not an identifier": 1}},
        {"path": "nb.ipynb", "cpus": True},
        {"path": "nb.ipynb", "memory": "1P"},
        {"path": "nb.ipynb", "name": "x" * 500},
    ],
)
def test_submit_bad_bodies_are_400(api, jp_root_dir: Path, hivemind_config_dir: Path, body):
    credentials.save(
        credentials.Credential(pool=f"127.0.0.1:{free_port()}", user="ada", token="x", expires_at=0),
        hivemind_config_dir,
    )
    (jp_root_dir / "nb.ipynb").write_text("{}")
    (jp_root_dir / "data.txt").write_text("x")
    (jp_root_dir / "folder").mkdir()
    status, answer = api("POST", "tasks", body=body)
    assert status == 400, answer
    assert answer["error"]


def test_submit_symlink_out_of_root_is_400(api, jp_root_dir: Path, tmp_path: Path, hivemind_config_dir: Path):
    credentials.save(
        credentials.Credential(pool=f"127.0.0.1:{free_port()}", user="ada", token="x", expires_at=0),
        hivemind_config_dir,
    )
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "nb.ipynb").write_text("{}")
    (jp_root_dir / "link").symlink_to(outside)
    status, answer = api("POST", "tasks", body={"path": "link/nb.ipynb"})
    assert status == 400
    assert "outside" in answer["error"]


def test_huge_body_is_413(api):
    status, answer = api("POST", "session", body=json.dumps({"username": "a" * 2_000_000}))
    assert status == 413 and "1 MiB" in answer["error"]


@pytest.mark.parametrize(
    "query",
    [
        {"after": "-1"},
        {"after": "x"},
        {"after": "9" * 30},  # beyond a 64-bit sequence number: once a 500
        {"after": str(2**63)},
        {"after": "\u0665"},
        {"limit": "0"},
        {"limit": "100000"},
        {"limit": "1e3"},
    ],
)
def test_events_bad_queries_are_400(api, hivemind_config_dir: Path, query):
    credentials.save(
        credentials.Credential(pool=f"127.0.0.1:{free_port()}", user="ada", token="x", expires_at=0),
        hivemind_config_dir,
    )
    status, _ = api("GET", "tasks", "t1", "events", params=query)
    assert status == 400
