"""Reading a RunConfig: defaults, then a YAML/JSON file, then ``--section.key value`` overrides (last wins); writing
it back atomically. Every value is coerced to its annotated type, and a failure names the file or flag and the key."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import types
import typing
from typing import Any

import yaml

from adakd_ds.config.schema import RunConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def resolve_shipped_path(path: str) -> str:
    """A relative path that does not exist here is looked up in the repository (ds_configs/ ships with it)."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    shipped = os.path.join(REPO_ROOT, path)
    return shipped if os.path.exists(shipped) else path


class ConfigError(ValueError):
    """A config file or override that does not fit the dataclasses."""


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Coerce a YAML/CLI value to the annotated type, naming `where` on failure."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _convert(value, args[0], where)
    try:
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return tp(value.value if isinstance(value, enum.Enum) else str(value).lower())
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes", "on"):
                return True
            if str(value).lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
    except (ValueError, TypeError):
        choices = ""
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            choices = " (choose from " + ", ".join(m.value for m in tp) + ")"
        raise ConfigError(f"{where}: cannot read {value!r} as {getattr(tp, '__name__', tp)}{choices}") from None
    return value


def _apply(obj: Any, data: dict[str, Any], where: str, prefix: str = "") -> None:
    hints = _field_types(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{where}: unknown config key '{path}' (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: '{path}' is a section and needs a mapping, got {value!r}")
            _apply(current, value, where, prefix=f"{path}.")
        elif isinstance(value, dict | list):
            raise ConfigError(f"{where}: '{path}' takes a single value, got {type(value).__name__} {value!r}")
        else:
            setattr(obj, key, _convert(value, hints[key], f"{where}: '{path}'"))


def _read_file(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as fh:
        try:
            data = json.load(fh) if path.endswith(".json") else yaml.safe_load(fh)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: not valid {'JSON' if path.endswith('.json') else 'YAML'}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """Turn ``--a.b v`` / ``--a.b=v`` into a nested dict; ``--local_rank`` from the launcher is dropped."""
    nested: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"command line: expected --key value, got {arg!r}")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise ConfigError(f"command line: --{key} needs a value")
            value = args[i + 1]
            i += 1
        i += 1
        key = key.replace("-", "_")
        if key in ("local_rank", "local-rank"):
            continue
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"command line: --{key} conflicts with an earlier value")
        node[leaf] = yaml.safe_load(value) if value not in ("",) else ""
    return nested


def load_config(path: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Build the RunConfig from defaults, then the file, then CLI overrides (last wins)."""
    cfg = RunConfig()
    if path:
        _apply(cfg, _read_file(path), path)
    if overrides:
        _apply(cfg, parse_overrides(overrides), "command line")
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, YAML-safe dict (enums as their values)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = config_to_dict(value)
        elif isinstance(value, enum.Enum):
            out[f.name] = value.value
        else:
            out[f.name] = value
    return out


def save_config(cfg: RunConfig, path: str, omit: tuple[str, ...] = ()) -> None:
    """Write the resolved config atomically, so a crash never leaves half a file; `omit` drops unused sections."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        yaml.safe_dump({k: v for k, v in config_to_dict(cfg).items() if k not in omit}, fh, sort_keys=False)
    os.replace(tmp, path)
