"""One config dataclass per stage: each field documented, exposed as CLI flags, loadable from YAML.

Declare fields with :func:`option`; the help text becomes ``--help``. Precedence is
defaults < ``--config file.yaml`` < explicit command-line flags. Unknown YAML keys are an error.

>>> from dataclasses import dataclass
>>> @dataclass
... class Demo:
...     lr: float = option(1e-4, "Peak learning rate.")
>>> import argparse; p = argparse.ArgumentParser(); add_config_args(p, Demo)
>>> config_from_args(Demo, p.parse_args(["--lr", "0.5"])).lr
0.5
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from nla.common.errors import NLAError

T = TypeVar("T")


def option(default: Any, help: str, *, choices: list[Any] | None = None, flag: str | None = None) -> Any:
    """A documented dataclass field. ``flag`` overrides the CLI name (default ``--field-name``)."""
    meta = {"help": help, "choices": choices, "flag": flag}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """Return (scalar type, is_list) for annotations like ``int``, ``str | None``, ``list[int]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else (str, False)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return (args[0] if args else str), True
    return tp, False


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_config_args(parser: argparse.ArgumentParser, cls: type, *, with_config_file: bool = True) -> None:
    """Add one flag per field of dataclass ``cls`` (and ``--config``) to ``parser``."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} options")
    if with_config_file:
        group.add_argument("--config", type=Path, default=None, help="YAML file with any of these options.")
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        scalar, is_list = _base_type(hints[f.name])
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f"{f.metadata.get('help', '')} (default: {default!r})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        if scalar is bool:
            kwargs.update(type=_parse_bool, nargs="?", const=True, metavar="BOOL")
        elif is_list:
            kwargs.update(type=scalar, nargs="*")
        else:
            kwargs.update(type=scalar if scalar in (int, float, str) else str)
        group.add_argument(flag, **kwargs)


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError as e:
        raise NLAError(f"config file not found: {path}") from e
    except yaml.YAMLError as e:
        raise NLAError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise NLAError(f"config file {path} must hold a mapping of option: value")
    return data


def make_config(cls: type[T], values: dict[str, Any], *, source: str = "config") -> T:
    """Build ``cls`` from a mapping, rejecting unknown keys with one clear error."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise NLAError(
            f"unknown {source} key(s) for {cls.__name__}: {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise NLAError(f"bad {source} for {cls.__name__}: {e}") from e


def config_from_args(cls: type[T], ns: argparse.Namespace) -> T:
    """Merge defaults, the optional ``--config`` YAML and explicit flags into a ``cls`` instance."""
    values: dict[str, Any] = {}
    cfg_path = getattr(ns, "config", None)
    if cfg_path is not None:
        values.update(load_yaml(cfg_path))
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    values.update({k: v for k, v in vars(ns).items() if k in names})
    return make_config(cls, values, source=f"--config {cfg_path}" if cfg_path else "option")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config dataclass (paths become strings)."""
    out = {}
    for k, v in dataclasses.asdict(cfg).items():
        out[k] = str(v) if isinstance(v, Path) else v
    return out
