"""Settings declared once: flags, TOML keys, environment names and the docs all come from it."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from hivemind_nodepool.pool import config as pool_config
from hivemind_nodepool.protocol.errors import InvalidInput
from hivemind_nodepool.protocol.layered_settings import SettingsSchema, show_duration, show_size
from hivemind_worker import settings as worker_settings

ROOT = Path(__file__).resolve().parents[2]
POOL = pool_config.SCHEMA
WORKER = worker_settings.SCHEMA
SCHEMAS = {"pool": POOL, "worker": WORKER}

# Every flag and TOML key that existed before the settings were declared once still works.
OLD_POOL_FLAGS = {
    "--listen", "--data-dir", "--heartbeat-interval", "--heartbeat-timeout", "--metrics-listen",
    "--tls-cert", "--tls-key", "--insecure", "--max-bundle-size", "--max-result-size", "--retention",
    "--allow-network",
}  # fmt: skip
OLD_WORKER_FLAGS = {
    "--pool", "--join-token", "--executor", "--state-dir", "--ca", "--insecure", "--labels", "--name",
    "--max-cpus", "--max-memory", "--max-gpus", "--image", "--heartbeat-interval", "--drain-grace",
    "--build-network", "--build-ca-bundle", "--task-network",
}  # fmt: skip


def _parser(schema: SettingsSchema) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="test", exit_on_error=False)
    schema.add_flags(parser)
    return parser


@pytest.mark.parametrize("which", ["pool", "worker"])
def test_every_field_is_one_declared_setting_with_derived_names(which: str) -> None:
    schema = SCHEMAS[which]
    prefix = {"pool": "HIVEMIND_POOL_", "worker": "HIVEMIND_WORKER_"}[which]
    assert list(schema.settings) == [f.name for f in dataclasses.fields(schema.cls)]
    flags = _parser(schema)._option_string_actions
    for name, s in schema.settings.items():
        assert s.flag == "--" + name.replace("_", "-") and s.flag in flags
        assert s.env == prefix + name.upper()
        assert s.legacy_env == "HIVEMIND_" + name.upper()
        assert s.spec.help
    old = OLD_POOL_FLAGS if which == "pool" else OLD_WORKER_FLAGS
    assert old <= {s.flag for s in schema.settings.values()}


def test_defaults_are_kept() -> None:
    pool = pool_config.load_settings(environ={})
    assert pool.listen == "127.0.0.1:50051" and pool.data_dir == Path(".hivemind/pool")
    assert (pool.heartbeat_interval, pool.heartbeat_timeout, pool.retention) == (5.0, 15.0, 30 * 86400)
    assert pool.max_bundle_size == 2 * 1024**3 and pool.feed_queue_limit == 1000
    assert not pool.insecure and not pool.allow_network and pool.tls_cert is None
    worker = worker_settings.load_settings(environ={})
    assert worker.executor == "docker" and worker.labels == {} and worker.max_gpus == -1
    assert worker.image.startswith("hivemind-runtime:") and worker.task_network == "bridge"
    assert worker.heartbeat_interval == 3.0 and worker.max_output_bytes == 16 * 1024**2


def test_flag_beats_env_beats_file_beats_default(tmp_path: Path) -> None:
    config = tmp_path / "pool.toml"
    config.write_text('[pool]\nretention = "3d"\nheartbeat-timeout = "40s"\nmax_bundle_size = "1G"\n')
    env = {"HIVEMIND_POOL_HEARTBEAT_TIMEOUT": "50", "HIVEMIND_POOL_MAX_BUNDLE_SIZE": "3G"}
    args = _parser(POOL).parse_args(["--max-bundle-size", "4G", "--insecure"])
    settings = pool_config.load_settings(config, POOL.flag_values(args), environ=env)
    assert settings.max_bundle_size == 4 * 1024**3  # flag
    assert settings.heartbeat_timeout == 50  # env over the file
    assert settings.retention == 3 * 86400  # file over the default
    assert settings.gc_interval == 600  # default
    assert settings.insecure is True
    # A boolean flag can also switch off what a lower layer switched on.
    args = _parser(WORKER).parse_args(["--no-insecure"])
    worker = worker_settings.load_settings(
        None, WORKER.flag_values(args), environ={"HIVEMIND_WORKER_INSECURE": "yes"}
    )
    assert worker.insecure is False


def test_flags_not_given_leave_lower_layers_alone() -> None:
    args = _parser(WORKER).parse_args([])
    assert WORKER.flag_values(args) == {}
    settings = worker_settings.load_settings(
        None, WORKER.flag_values(args), environ={"HIVEMIND_WORKER_LABELS": "gpu=a100"}
    )
    assert settings.labels == {"gpu": "a100"}


def test_the_pool_and_the_worker_have_separate_variables() -> None:
    pool = pool_config.load_settings(
        environ={"HIVEMIND_WORKER_HEARTBEAT_INTERVAL": "1", "HIVEMIND_WORKER_INSECURE": "1"}
    )
    assert pool.heartbeat_interval == 5.0 and not pool.insecure
    worker = worker_settings.load_settings(
        environ={"HIVEMIND_POOL_HEARTBEAT_INTERVAL": "1", "HIVEMIND_POOL_INSECURE": "1"}
    )
    assert worker.heartbeat_interval == 3.0 and not worker.insecure
    pool_names = {s.env for s in POOL.settings.values()}
    worker_names = {s.env for s in WORKER.settings.values()}
    assert not pool_names & (worker_names | {s.legacy_env for s in WORKER.settings.values()})
    assert not worker_names & {s.legacy_env for s in POOL.settings.values()}


def test_an_old_name_still_works_and_names_the_new_one(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        pool = pool_config.load_settings(environ={"HIVEMIND_HEARTBEAT_TIMEOUT": "45"})
    assert pool.heartbeat_timeout == 45
    assert "HIVEMIND_HEARTBEAT_TIMEOUT" in caplog.text and "HIVEMIND_POOL_HEARTBEAT_TIMEOUT" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        worker = worker_settings.load_settings(environ={"HIVEMIND_POOL": "old:1"})
    assert worker.pool == "old:1" and "HIVEMIND_WORKER_POOL" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        both = {"HIVEMIND_MAX_CPUS": "1", "HIVEMIND_WORKER_MAX_CPUS": "2"}
        assert worker_settings.load_settings(environ=both).max_cpus == 2.0  # the new name wins
    assert "HIVEMIND_MAX_CPUS is ignored" in caplog.text


def test_the_admin_commands_data_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HIVEMIND_DATA_DIR", raising=False)
    monkeypatch.delenv("HIVEMIND_POOL_DATA_DIR", raising=False)
    assert pool_config.default_data_dir() == Path(".hivemind/pool")
    monkeypatch.setenv("HIVEMIND_POOL_DATA_DIR", "/srv/pool")
    assert pool_config.default_data_dir() == Path("/srv/pool")
    monkeypatch.delenv("HIVEMIND_POOL_DATA_DIR")
    monkeypatch.setenv("HIVEMIND_DATA_DIR", "/srv/old")
    assert pool_config.default_data_dir() == Path("/srv/old")


@pytest.mark.parametrize(
    ("source", "value", "where", "what"),
    [
        ("env", "lots", "HIVEMIND_WORKER_MAX_MEMORY", "not a size"),
        ("flag", "lots", "--max-memory", "not a size"),
        ("file", "'lots'", "[worker]", "not a size"),
        ("env", "maybe", "HIVEMIND_WORKER_INSECURE", "not a yes/no value"),
        ("env", "many", "HIVEMIND_WORKER_PIDS_LIMIT", "not a whole number"),
        ("env", "kubernetes", "HIVEMIND_WORKER_EXECUTOR", "choose docker or local"),
        ("env", "novalue", "HIVEMIND_WORKER_LABELS", "bad label"),
    ],
)
def test_a_bad_value_names_the_setting_and_its_source(
    tmp_path: Path, source: str, value: str, where: str, what: str
) -> None:
    name = where.removeprefix("HIVEMIND_WORKER_").lower() if source == "env" else "max_memory"
    config = None
    environ: dict[str, str] = {}
    overrides: dict[str, str] = {}
    if source == "env":
        environ = {where: value}
    elif source == "flag":
        overrides = {"max_memory": value}
    else:
        config = tmp_path / "worker.toml"
        config.write_text(f"[worker]\nmax_memory = {value}\n")
    with pytest.raises(InvalidInput) as caught:
        worker_settings.load_settings(config, overrides, environ=environ)
    message = str(caught.value)
    assert f"setting {name}" in message and where in message and what in message


def test_a_bad_flag_value_is_a_usage_error() -> None:
    with pytest.raises(argparse.ArgumentError, match="not a duration"):
        _parser(POOL).parse_args(["--retention", "forever"])


def test_unknown_keys_and_bad_files_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "pool.toml"
    config.write_text("[pool]\npoll_interval = 1\n")  # gone: nothing read it
    with pytest.raises(InvalidInput, match="unknown setting 'poll_interval'"):
        pool_config.load_settings(config, environ={})
    config.write_text("not toml [")
    with pytest.raises(InvalidInput, match="not valid TOML"):
        pool_config.load_settings(config, environ={})


def test_defaults_are_shown_as_people_type_them() -> None:
    assert [show_size(n) for n in (2 * 1024**3, 16 * 1024**2, 1536, 0)] == ["2G", "16M", "1536", "0"]
    assert [show_duration(s) for s in (30 * 86400, 6 * 3600, 600, 5, 0.5)] == [
        "30d",
        "6h",
        "10m",
        "5s",
        "0.5s",
    ]


def test_the_docs_tables_match_the_declaration() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/settings_docs.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for name, doc in (("pool", "admin-guide.md"), ("worker", "worker.md")):
        assert SCHEMAS[name].markdown_table() in (ROOT / "docs" / doc).read_text()
