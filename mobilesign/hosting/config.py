"""Configuration: one TOML file with a section per service, overridden by environment variables.

Precedence (lowest to highest): built-in defaults, the TOML file (``--config`` or
``MOBILESIGN_CONFIG``), then ``MOBILESIGN_<SECTION>_<KEY>`` environment variables, for example
``MOBILESIGN_HSM_PROXY_LISTEN=127.0.0.1:0``. ``MOBILESIGN_STATE_DIR`` sets the one state
directory under which every service keeps its files unless a path is given explicitly.

Everything is checked before a service starts (:func:`check_document`), so that a typo never
falls back to a default silently: an unknown section, an unknown key in the file, or a
``MOBILESIGN_<SECTION>_<KEY>`` variable of a known section naming no key, is refused, and so
are values of the wrong type and, by the setting's name:

- ``*listen``: ``HOST:PORT`` with a port from 0 to 65535, 0 meaning any free port (the bound
  one is written to the run file); empty only where the default is empty (off);
- a setting named after a service (``hsm_proxy``, ``cosigner``, ``ra``, ``gateway``): that
  peer's ``HOST:PORT``, port 1 to 65535;
- ``database``: empty or a ``postgresql://`` URL (never repeated in a message: it may hold a
  password);
- ``log_level``: ``debug``, ``info``, ``warning``, ``error`` or ``critical``.

Other ``MOBILESIGN_*`` variables (``MOBILESIGN_CONFIG``, ``MOBILESIGN_STATE_DIR``,
``MOBILESIGN_INSTANCE``, the client's and the tests' own) are not configuration keys and are
left alone.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
import tomllib
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ENV_PREFIX = "MOBILESIGN_"

#: Every section a configuration file may hold, and the module whose ``load(document)`` reads
#: it, with the settings dataclass: each service checks the whole shared file, so that a typo
#: in any section is refused by whichever service starts first.
SECTIONS: dict[str, tuple[str, str]] = {
    "mobilesign": ("mobilesign.hosting.config", "SharedConfig"),
    "hsm_proxy": ("hsm_proxy.config", "HsmProxyConfig"),
    "ra": ("ra.config", "RaConfig"),
    "cosigner": ("cosigner.config", "CosignerConfig"),
    "gateway": ("server.config", "GatewayConfig"),
}

_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_POSTGRES_PREFIXES = ("postgresql://", "postgres://")


class StartupError(Exception):
    """The service cannot start; the message says why and which setting to change, in one
    line, and never holds a secret."""


class ConfigError(StartupError, ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


@dataclasses.dataclass(frozen=True)
class SharedConfig:
    """Settings every service shares (section ``[mobilesign]``)."""

    #: The directory under which every service keeps its state (``MOBILESIGN_STATE_DIR``
    #: overrides it); relative to the working directory.
    state_dir: str = "var"


def load(document: dict[str, Any]) -> SharedConfig:
    """Read ``[mobilesign]`` from the configuration document (its one variable,
    ``MOBILESIGN_STATE_DIR``, is read by :func:`state_dir`)."""
    return load_section(SharedConfig, "mobilesign", document)


def load_file(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Read the TOML configuration file, or return an empty mapping when there is none."""
    if path is None:
        env_path = os.environ.get(ENV_PREFIX + "CONFIG")
        if not env_path:
            return {}
        path = env_path
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc}") from exc


def state_dir(document: dict[str, Any]) -> Path:
    """The state directory: ``MOBILESIGN_STATE_DIR``, ``[mobilesign] state_dir``, or ``./var``."""
    return Path(os.environ.get(ENV_PREFIX + "STATE_DIR") or load(document).state_dir).resolve()


def check_document(document: dict[str, Any]) -> None:
    """Refuse an unknown section, then load every section (file and environment) as its
    service would, so that any error anywhere is reported before anything starts."""
    unknown = [name for name in document if name not in SECTIONS]
    if unknown:
        raise ConfigError(
            f"unknown section [{unknown[0]}] in the configuration file"
            f"{_suggestion(unknown[0], SECTIONS, '[{}]')}; the sections are "
            + ", ".join(f"[{name}]" for name in SECTIONS)
        )
    for module_name, _ in SECTIONS.values():
        importlib.import_module(module_name).load(document)


def _suggestion(word: str, choices: Iterable[str], form: str = "{}") -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {form.format(close[0])}?)" if close else ""


def _env_name(section: str, key: str) -> str | None:
    """The variable that overrides ``[section] key``; none for ``[mobilesign]``, whose prefix
    ``MOBILESIGN_`` alone is shared with variables that are not configuration."""
    if section == "mobilesign":
        return None
    return f"{ENV_PREFIX}{section}_{key}".upper()


def _coerce(name: str, raw: Any, annotation: Any) -> Any:
    """Convert a TOML or environment value to the field's declared type, refusing mismatches."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if raw is None or raw == "":
            return None
        annotation = args[0]
    if annotation is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "0", "false", "no"):
            return raw.lower() in ("1", "true", "yes")
    elif annotation is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
            return int(raw)
    elif annotation is float:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
        if isinstance(raw, str):
            try:
                return float(raw)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(raw, str):
            return raw
    elif annotation is Path and isinstance(raw, str):
        return Path(raw)
    raise ConfigError(f"{name}: expected {getattr(annotation, '__name__', annotation)}")


def _check_address(name: str, value: str, lowest_port: int, may_be_empty: bool) -> None:
    """Refuse a ``HOST:PORT`` without host or port, or with a port below ``lowest_port`` or
    above 65535 (an IPv6 host is written in brackets, ``[::1]:50051``)."""
    form = f"HOST:PORT, the port {lowest_port} to 65535"
    if lowest_port == 0:
        form += ", 0 for any free port"
    if not value:
        if may_be_empty:
            return
        raise ConfigError(f"{name} is empty: expected {form}")
    host, colon, port = value.rpartition(":")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ConfigError(f"{name} = {value!r}: write an IPv6 host as [HOST]:PORT")
    if not colon or not host or not port.isdigit():
        raise ConfigError(f"{name} = {value!r}: no host or port, expected {form}")
    if not lowest_port <= int(port) <= 65535:
        raise ConfigError(f"{name} = {value!r}: port {int(port)} is outside {lowest_port} to 65535")


def _check_value(name: str, key: str, value: Any, default: Any) -> None:
    """The checks a setting's name implies (see the module's docstring)."""
    if not isinstance(value, str):
        return
    if key.endswith("listen"):
        _check_address(name, value, 0, may_be_empty=default == "")
    elif key in SECTIONS and key != "mobilesign":
        _check_address(name, value, 1, may_be_empty=False)
    elif key == "database":
        if value and not value.startswith(_POSTGRES_PREFIXES):
            # The value itself is not repeated: a connection string may hold a password.
            raise ConfigError(
                f"{name}: expected empty (SQLite files under the state "
                "directory) or a postgresql:// URL"
            )
    elif key == "log_level" and value.lower() not in _LOG_LEVELS:
        raise ConfigError(f"{name} = {value!r}: expected one of {', '.join(_LOG_LEVELS)}")


def load_section(cls: type[T], section: str, document: dict[str, Any]) -> T:
    """Build the dataclass ``cls`` from ``document[section]`` and the environment.

    Unknown keys in the file, and variables ``MOBILESIGN_<SECTION>_*`` naming no key, are an
    error (a typo must not silently fall back to a default); so is a value its setting's name
    does not allow (see the module's docstring).
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    table = document.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}] must be a table (a section), not a value")
    from_file = dict(table)
    unknown = sorted(set(from_file) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown keys in [{section}]: {', '.join(unknown)}{_suggestion(unknown[0], fields)}"
        )
    known_env = {name: _env_name(section, name) for name in fields}
    if section != "mobilesign":
        prefix = f"{ENV_PREFIX}{section.upper()}_"
        for variable in sorted(os.environ):
            if variable.startswith(prefix) and variable not in known_env.values():
                raise ConfigError(
                    f"environment variable {variable} is not a key of [{section}]"
                    f"{_suggestion(variable, (v for v in known_env.values() if v))}"
                )
    values: dict[str, Any] = {}
    for name, field in fields.items():
        env_name = known_env[name]
        if env_name is not None and env_name in os.environ:
            source = env_name
            values[name] = _coerce(env_name, os.environ[env_name], hints[name])
        elif name in from_file:
            source = f"[{section}] {name}"
            values[name] = _coerce(source, from_file[name], hints[name])
        else:
            continue
        _check_value(source, name, values[name], field.default)
    return cls(**values)
