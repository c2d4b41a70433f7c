"""Configuration: one TOML file with a section per service, overridden by environment variables.

Precedence (lowest to highest): built-in defaults, the TOML file (``--config`` or
``MOBILESIGN_CONFIG``), then ``MOBILESIGN_<SECTION>_<KEY>`` environment variables, for example
``MOBILESIGN_HSM_PROXY_LISTEN=127.0.0.1:0``. ``MOBILESIGN_STATE_DIR`` sets the one state
directory under which every service keeps its files unless a path is given explicitly.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ENV_PREFIX = "MOBILESIGN_"


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


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
    value = os.environ.get(ENV_PREFIX + "STATE_DIR") or document.get("mobilesign", {}).get(
        "state_dir", "var"
    )
    return Path(value).resolve()


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
    raise ConfigError(
        f"configuration {name}: expected {getattr(annotation, '__name__', annotation)}"
    )


def load_section(cls: type[T], section: str, document: dict[str, Any]) -> T:
    """Build the dataclass ``cls`` from ``document[section]`` and the environment.

    Unknown keys in the file are an error (a typo must not silently fall back to a default).
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    from_file = dict(document.get(section, {}))
    unknown = set(from_file) - set(fields)
    if unknown:
        raise ConfigError(f"unknown keys in [{section}]: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for name in fields:
        env_name = f"{ENV_PREFIX}{section}_{name}".upper()
        if env_name in os.environ:
            values[name] = _coerce(env_name, os.environ[env_name], hints[name])
        elif name in from_file:
            values[name] = _coerce(f"[{section}] {name}", from_file[name], hints[name])
    return cls(**values)
