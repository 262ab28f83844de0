"""Settings in layers, for the pool and the worker alike.

defaults (the dataclass) < a table of a TOML file (--config) < HIVEMIND_* environment < flags.
Values arrive as text from the environment and flags, and as TOML values from the file; each
field's kind says how to read it ('30m' for a duration, '8G' for a size ...). An unknown key in
the file is an error: a typo should not pass silently.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from hivemind_nodepool.protocol.errors import InvalidInput
from hivemind_nodepool.protocol.units import parse_duration, parse_size

ENV_PREFIX = "HIVEMIND_"


class Validated(Protocol):
    def validate(self) -> None: ...


S = TypeVar("S", bound=Validated)


@dataclass(frozen=True)
class FieldKinds:
    """How to read each field that is not plain text."""

    durations: frozenset[str] = frozenset()
    sizes: frozenset[str] = frozenset()
    paths: frozenset[str] = frozenset()
    bools: frozenset[str] = frozenset()
    ints: frozenset[str] = frozenset()
    floats: frozenset[str] = frozenset()
    custom: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)


def parse_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise InvalidInput(f"{name}: not a yes/no value: {value!r}")


def convert(name: str, value: Any, kinds: FieldKinds) -> Any:
    """One value read according to its field's kind."""
    if value is None:
        return None
    try:
        if name in kinds.custom:
            return kinds.custom[name](value)
        if name in kinds.durations:
            return parse_duration(value if isinstance(value, (int, float)) else str(value))
        if name in kinds.sizes:
            return parse_size(value if isinstance(value, int) else str(value))
        if name in kinds.paths:
            return Path(str(value)).expanduser() if str(value) else None
        if name in kinds.bools:
            return parse_bool(name, value)
        if name in kinds.floats:
            return float(value)
        if name in kinds.ints:
            return int(value)
    except ValueError:
        raise InvalidInput(f"{name}: bad value {value!r}") from None
    return str(value)


def _file_layer(config_file: Path, table: str, names: set[str]) -> dict[str, Any]:
    try:
        data = tomllib.loads(Path(config_file).read_text())
    except OSError as exc:
        raise InvalidInput(f"cannot read the config file {config_file}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"the config file {config_file} is not valid TOML: {exc}") from None
    section = data.get(table, data)
    if not isinstance(section, dict):
        raise InvalidInput(f"[{table}] in {config_file} must be a table")
    found = {}
    for key, value in section.items():
        name = key.replace("-", "_")
        if name not in names:
            raise InvalidInput(f"unknown setting {key!r} in {config_file}")
        found[name] = value
    return found


def load_layers(
    cls: type[S],
    table: str,
    kinds: FieldKinds,
    *,
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> S:
    """The settings of dataclass `cls` with every layer applied, validated."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    env = os.environ if environ is None else environ
    layers: list[Mapping[str, Any]] = [
        _file_layer(config_file, table, names) if config_file is not None else {},
        {name: env[ENV_PREFIX + name.upper()] for name in names if ENV_PREFIX + name.upper() in env},
        {name: value for name, value in (overrides or {}).items() if value is not None},
    ]
    values: dict[str, Any] = {}
    for layer in layers:
        for name, value in layer.items():
            values[name] = convert(name, value, kinds)
    settings = cls(**values)
    settings.validate()
    return settings
