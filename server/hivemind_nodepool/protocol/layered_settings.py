"""Settings declared once and read in layers, for the pool and the worker alike.

Each setting is a dataclass field made with `setting(...)`: its kind (how text is read: '30m' for
a duration, '8G' for a size ...), its default and its help. Everything else comes from that one
declaration: the flag (`--heartbeat-timeout`), the TOML key (`heartbeat_timeout`, or
`heartbeat-timeout`, in the file's `[pool]` or `[worker]` table), the environment variable
(`HIVEMIND_POOL_HEARTBEAT_TIMEOUT`) and the row of the settings table in the docs.

The layers: defaults < the TOML file (--config) < the environment < flags. An unknown key in the
file is an error: a typo should not pass silently. A bad value is an InvalidInput that names the
setting and where the value came from.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from hivemind_nodepool.protocol.errors import HiveMindError, InvalidInput
from hivemind_nodepool.protocol.units import parse_duration, parse_size

log = logging.getLogger(__name__)

# Before the pool and the worker had prefixes of their own, both read HIVEMIND_<NAME>. Those names
# still work for one release, with a warning that names the new variable.
LEGACY_ENV_PREFIX = "HIVEMIND_"


class Validated(Protocol):
    def validate(self) -> None: ...


S = TypeVar("S", bound=Validated)


# -- kinds: how a value is read from text (or a TOML value), and shown ---------------------------


@dataclass(frozen=True)
class Kind:
    """One kind of value. `read` raises ValueError or InvalidInput saying what is wrong."""

    name: str
    metavar: str
    read: Callable[[Any], Any]
    show: Callable[[Any], str] = str
    repeated: bool = False  # a list: its flag may be given more than once


def _read_text(value: Any) -> str:
    return str(value)


def _read_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"not a whole number: {value!r}") from None


def _read_float(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        raise ValueError(f"not a number: {value!r}") from None


def _read_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a yes/no value: {value!r} (try true or false)")


def _read_size(value: Any) -> int:
    return parse_size(value if isinstance(value, int) and not isinstance(value, bool) else str(value))


def _read_duration(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return parse_duration(value)
    return parse_duration(str(value))


def _read_path(value: Any) -> Path | None:
    return Path(str(value)).expanduser() if str(value) else None


def _read_list(value: Any) -> list[str]:
    """A TOML list, the values of a repeated flag, or text separated by spaces (an environment
    variable): each item once, in order."""
    items = value if isinstance(value, (list, tuple)) else str(value).split()
    return list(dict.fromkeys(str(item).strip() for item in items if str(item).strip()))


def _show_list(value: list[str]) -> str:
    return " ".join(value)


def show_size(size: int) -> str:
    """'2G' for 2 GiB: the largest unit that divides it, as people type it."""
    for unit, power in (("T", 4), ("G", 3), ("M", 2), ("K", 1)):
        if size and size % 1024**power == 0:
            return f"{size // 1024**power}{unit}"
    return str(size)


def show_duration(seconds: float) -> str:
    """'30d', '6h', '90s': the largest unit that divides it."""
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % length == 0:
            return f"{int(seconds // length)}{unit}"
    return f"{seconds:g}s"


def _show_bool(value: bool) -> str:
    return "true" if value else "false"


TEXT = Kind("text", "TEXT", _read_text)
INT = Kind("int", "N", _read_int)
FLOAT = Kind("float", "N", _read_float)
BOOL = Kind("bool", "", _read_bool, _show_bool)
SIZE = Kind("size", "SIZE", _read_size, show_size)
DURATION = Kind("duration", "DURATION", _read_duration, show_duration)
PATH = Kind("path", "PATH", _read_path)
TEXT_LIST = Kind("list", "TEXT", _read_list, _show_list, repeated=True)


# -- the declaration --------------------------------------------------------------------------

_SPEC = "hivemind_setting"


@dataclass(frozen=True)
class Spec:
    """What `setting()` records on a field."""

    kind: Kind
    help: str
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    shown_default: str | None = None  # for the docs and --help when the default is computed


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    kind: Kind = TEXT,
    default_factory: Callable[[], Any] | None = None,
    choices: tuple[str, ...] = (),
    metavar: str | None = None,
    shown_default: str | None = None,
) -> Any:
    """A dataclass field that is a setting: the one place its flag, TOML key and variable come from."""
    spec = Spec(kind=kind, help=help, choices=choices, metavar=metavar, shown_default=shown_default)
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata={_SPEC: spec})
    return dataclasses.field(default=default, metadata={_SPEC: spec})


@dataclass(frozen=True)
class Setting:
    """One declared setting with the names derived from it."""

    name: str  # the field name, also the TOML key
    spec: Spec
    flag: str  # --heartbeat-timeout
    env: str  # HIVEMIND_POOL_HEARTBEAT_TIMEOUT
    legacy_env: str  # HIVEMIND_HEARTBEAT_TIMEOUT, accepted for one release
    default: Any  # dataclasses.MISSING when a factory computes it

    def read(self, value: Any, source: str) -> Any:
        """`value` read by the setting's kind; a bad one names the setting and `source`."""
        if value is None:
            return None
        try:
            result = self.spec.kind.read(value)
        except (ValueError, HiveMindError) as exc:
            raise InvalidInput(f"setting {self.name} from {source}: {exc}") from None
        if self.spec.choices and result not in self.spec.choices:
            raise InvalidInput(
                f"setting {self.name} from {source}: unknown value {result!r}: "
                f"choose {' or '.join(self.spec.choices)}"
            )
        return result

    def shown_default(self) -> str:
        """The default as the docs and --help show it; '' when there is none."""
        if self.spec.shown_default is not None:
            return self.spec.shown_default
        if self.default is dataclasses.MISSING or self.default is None or self.default == "":
            return ""
        return self.spec.kind.show(self.default)


class SettingsSchema(Generic[S]):
    """The settings of one program (the pool, the worker): a dataclass whose fields are `setting()`s."""

    def __init__(self, cls: type[S], *, table: str, env_prefix: str) -> None:
        self.cls = cls
        self.table = table  # the TOML table: [pool], [worker]
        self.env_prefix = env_prefix
        self.settings: dict[str, Setting] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            spec = f.metadata.get(_SPEC)
            if not isinstance(spec, Spec):
                raise TypeError(f"{cls.__name__}.{f.name} is not declared with setting()")
            self.settings[f.name] = Setting(
                name=f.name,
                spec=spec,
                flag="--" + f.name.replace("_", "-"),
                env=env_prefix + f.name.upper(),
                legacy_env=LEGACY_ENV_PREFIX + f.name.upper(),
                default=f.default,
            )

    # -- flags

    def add_flags(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        """One flag per setting; a flag not given is None, so that lower layers show through."""
        for s in self.settings.values():
            shown = s.shown_default()
            text = s.spec.help + (f" (default: {shown})" if shown else "")
            text = text.replace("%", "%%").replace("`", "")
            if s.spec.kind is BOOL:
                parser.add_argument(s.flag, action=argparse.BooleanOptionalAction, default=None, help=text)
            elif s.spec.kind.repeated:
                parser.add_argument(
                    s.flag,
                    action="append",
                    metavar=s.spec.metavar or s.spec.kind.metavar,
                    default=None,
                    help=text + " (repeat the flag for more than one)",
                )
            else:
                parser.add_argument(
                    s.flag,
                    type=_flag_reader(s),
                    choices=s.spec.choices or None,
                    metavar=None if s.spec.choices else (s.spec.metavar or s.spec.kind.metavar),
                    default=None,
                    help=text,
                )

    def flag_values(self, args: argparse.Namespace) -> dict[str, Any]:
        """The settings given on the command line parsed by a parser `add_flags` filled."""
        return {name: getattr(args, name) for name in self.settings if getattr(args, name, None) is not None}

    # -- layers

    def from_environment(self, name: str, environ: Mapping[str, str] | None = None) -> Any:
        """One setting from the environment alone (None when unset), for code that runs no `load`."""
        env = os.environ if environ is None else environ
        found = None
        for key, value, source in self._env_layer(env):
            if key == name:
                found = self.settings[name].read(value, source)
        return found

    def load(
        self,
        config_file: Path | None = None,
        overrides: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> S:
        """The settings with every layer applied, validated. `overrides` are the flags' values."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        file_layer = self._file_layer(Path(config_file)) if config_file is not None else iter(())
        for layer in (file_layer, self._env_layer(env), self._override_layer(overrides or {})):
            for name, value, source in layer:
                values[name] = self.settings[name].read(value, source)
        settings = self.cls(**values)
        settings.validate()
        return settings

    def _file_layer(self, config_file: Path) -> Iterator[tuple[str, Any, str]]:
        try:
            data = tomllib.loads(config_file.read_text())
        except OSError as exc:
            raise InvalidInput(f"cannot read the config file {config_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(f"the config file {config_file} is not valid TOML: {exc}") from None
        section = data.get(self.table, data)
        if not isinstance(section, dict):
            raise InvalidInput(f"[{self.table}] in {config_file} must be a table")
        for key, value in section.items():
            name = key.replace("-", "_")
            if name not in self.settings:
                raise InvalidInput(f"unknown setting {key!r} in {config_file}")
            yield name, value, f"{config_file} [{self.table}]"

    def _env_layer(self, env: Mapping[str, str]) -> Iterator[tuple[str, Any, str]]:
        for s in self.settings.values():
            if s.legacy_env in env:
                if s.env in env:
                    log.warning("%s is ignored: %s is set", s.legacy_env, s.env)
                else:
                    log.warning(
                        "%s is deprecated and stops working in the next release: set %s instead",
                        s.legacy_env,
                        s.env,
                    )
                    yield s.name, env[s.legacy_env], s.legacy_env
            if s.env in env:
                yield s.name, env[s.env], s.env

    def _override_layer(self, overrides: Mapping[str, Any]) -> Iterator[tuple[str, Any, str]]:
        for name, value in overrides.items():
            if name not in self.settings:
                raise TypeError(f"{self.cls.__name__} has no setting {name!r}")
            if value is not None:
                yield name, value, self.settings[name].flag

    # -- docs

    def markdown_table(self) -> str:
        """The settings table of the docs: TOML key, flag, environment variable, default, meaning."""
        rows = [
            "| TOML key | flag | environment | default | meaning |",
            "| --- | --- | --- | --- | --- |",
        ]
        for s in self.settings.values():
            shown = s.shown_default()
            default = "—" if not shown else shown if s.spec.shown_default is not None else f"`{shown}`"
            cells = [f"`{s.name}`", f"`{s.flag}`", f"`{s.env}`", default, s.spec.help]
            rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        return "\n".join(rows) + "\n"


def _flag_reader(s: Setting) -> Callable[[str], Any]:
    """argparse's `type` for a setting's flag: a bad value is a usage error (exit 2)."""

    def read(text: str) -> Any:
        try:
            return s.spec.kind.read(text)
        except (ValueError, HiveMindError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    read.__name__ = s.spec.kind.name
    return read
