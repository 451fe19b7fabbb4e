"""Config dataclasses: each field documented, exposed as CLI flags, loadable from YAML.

Declare fields with :func:`option`; the help text becomes ``--help``. Precedence is
defaults < ``--config file.yaml`` < explicit command-line flags. Unknown YAML keys are an error.

A config that combines others (``nla train pipeline``) declares each part with :func:`section`: the part's
own dataclass, with defaults of its own. Its fields become dotted flags (``--rl.kl-coef 0.02``, dest
``rl.kl_coef``; sections nest: ``--selftext.ar.batch-size``) and nested YAML (``rl: {kl_coef: 0.02}``),
merged key by key over the section's defaults. A section's ``managed`` fields are filled in by the enclosing
config (paths that connect stages, options shared by every part): they get no flag, setting one is an error,
and :func:`config_to_dict` leaves them out.

>>> from dataclasses import dataclass
>>> @dataclass
... class Demo:
...     lr: float = option(1e-4, "Peak learning rate.")
>>> import argparse; p = argparse.ArgumentParser(); add_config_args(p, Demo)
>>> config_from_args(Demo, p.parse_args(["--lr", "0.5"])).lr
0.5
>>> @dataclass
... class Outer:
...     seed: int = option(0, "Seed.")
...     demo: Demo = section(Demo, "The demo part.", lr=0.1)
>>> p = argparse.ArgumentParser(); add_config_args(p, Outer)
>>> config_from_args(Outer, p.parse_args(["--demo.lr", "0.5"])).demo.lr
0.5
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from nla.common.errors import NLAError

T = TypeVar("T")


def option(
    default: Any, help: str, *, choices: list[Any] | None = None, flag: str | None = None, aliases: tuple[str, ...] = ()
) -> Any:
    """A documented dataclass field. ``flag`` overrides the CLI name (default ``--field-name``); ``aliases``
    are more names of the same flag (top-level options only)."""
    meta = {"help": help, "choices": choices, "flag": flag, "aliases": tuple(aliases)}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(cls: type, help: str, *, managed: Mapping[str, str] | None = None, **defaults: Any) -> Any:
    """A dataclass field holding a whole ``cls`` config (defaults: ``cls``'s own, updated by ``defaults``).

    ``managed`` maps the fields the enclosing config fills in itself to the reason shown when a user sets one.
    """
    managed = dict(managed or {})
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    bad = sorted((set(managed) | set(defaults)) - names) or sorted(set(managed) & set(defaults))
    if bad:
        raise TypeError(f"section {cls.__name__}: {bad} are not fields, or are managed and have a default")
    cls(**defaults)  # fail at declaration, not at first use
    meta = {"help": help, "section": cls, "managed": managed}
    return dataclasses.field(default_factory=lambda: cls(**copy.deepcopy(defaults)), metadata=meta)


def _section_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init and f.metadata.get("section")]


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
    """Add one flag per field of dataclass ``cls`` (and ``--config``) to ``parser``; one group per section."""
    group = parser.add_argument_group(f"{cls.__name__} options")
    if with_config_file:
        group.add_argument("--config", type=Path, default=None, help="YAML file with any of these options.")
    _add_fields(parser, group, cls, "", None, {})


def _add_fields(
    parser: argparse.ArgumentParser,
    group: argparse._ArgumentGroup,
    cls: type,
    prefix: str,
    defaults: Any,
    managed: Mapping[str, str],
) -> None:
    """The flags of ``cls``'s fields, named ``--<prefix><field>``; then one group for each section."""
    sections = [f for f in dataclasses.fields(cls) if f.init and f.name not in managed and f.metadata.get("section")]
    hints = typing.get_type_hints(
        cls, localns={f.metadata["section"].__name__: f.metadata["section"] for f in sections}
    )
    for f in dataclasses.fields(cls):
        if not f.init or f.name in managed or f.metadata.get("section"):
            continue
        scalar, is_list = _base_type(hints[f.name])
        own_flag = (f.metadata.get("flag") or "--" + f.name.replace("_", "-")).removeprefix("--")
        if defaults is not None:
            default = getattr(defaults, f.name)
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f"{f.metadata.get('help', '')} (default: {default!r})"
        kwargs: dict[str, Any] = {"dest": prefix + f.name, "default": argparse.SUPPRESS, "help": help_text}
        if prefix and not f.metadata.get("choices"):
            kwargs["metavar"] = f.name.upper()  # not the whole dotted dest
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        if scalar is bool:
            kwargs.update(type=_parse_bool, nargs="?", const=True, metavar="BOOL")
        elif is_list:
            kwargs.update(type=scalar, nargs="*")
        else:
            kwargs.update(type=scalar if scalar in (int, float, str) else str)
        names = ["--" + prefix.replace("_", "-") + own_flag, *([] if prefix else f.metadata.get("aliases", ()))]
        group.add_argument(*names, **kwargs)
    for f in sections:
        sub, dotted = f.metadata["section"], prefix + f.name
        sub_defaults = getattr(defaults, f.name) if defaults is not None else f.default_factory()  # type: ignore[misc]
        sub_group = parser.add_argument_group(f"{dotted} options ({sub.__name__})", f.metadata["help"])
        _add_fields(parser, sub_group, sub, dotted + ".", sub_defaults, f.metadata["managed"])


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


def nest(values: Mapping[str, Any]) -> dict[str, Any]:
    """``{"rl.kl_coef": 0.02}`` -> ``{"rl": {"kl_coef": 0.02}}`` (undotted keys and nested mappings kept)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise NLAError(f"option {p} is not a section, so {key} is not an option")
        both = isinstance(node.get(leaf), Mapping) and isinstance(value, Mapping)
        node[leaf] = merge(node[leaf], value) if both else value
    return out


def merge(base: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """``new`` over ``base``, key by key inside nested mappings (a later layer of options over an earlier)."""
    out = dict(base)
    for key, value in new.items():
        both = isinstance(out.get(key), Mapping) and isinstance(value, Mapping)
        out[key] = merge(out[key], value) if both else value
    return out


def make_config(cls: type[T], values: Mapping[str, Any], *, source: str = "config") -> T:
    """Build ``cls`` from a mapping, rejecting unknown keys with one clear error.

    A section given as a mapping is merged over that section's defaults; given as an instance of its class
    it is taken as it is (its managed fields are then simply overwritten by whoever manages them).
    """
    return _build(cls, values, source, "")


def _build(cls: type[T], values: Mapping[str, Any], source: str, where: str) -> T:
    values = dict(values)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    in_section = f" in section {where}" if where else ""
    unknown = sorted(set(values) - names)
    if unknown:
        raise NLAError(
            f"unknown {source} key(s) for {cls.__name__}{in_section}: {', '.join(unknown)}; "
            f"known: {', '.join(sorted(names))}"
        )
    for f in _section_fields(cls):
        sub, value, dotted = f.metadata["section"], values.get(f.name), (f"{where}." if where else "") + f.name
        if f.name not in values or isinstance(value, sub):
            continue
        value = {} if value is None else value  # an empty YAML section
        if not isinstance(value, Mapping):
            raise NLAError(f"{source}: section {dotted} must be a mapping of option: value, got {value!r}")
        managed = f.metadata["managed"]
        clash = sorted(set(value) & set(managed))
        if clash:
            raise NLAError(f"{source}: {dotted}.{clash[0]} cannot be set ({managed[clash[0]]})")
        settable = [g.name for g in dataclasses.fields(sub) if g.init and g.name not in managed]
        unknown = sorted(set(value) - set(settable))
        if unknown:
            raise NLAError(
                f"unknown {source} key(s) for {sub.__name__} in section {dotted}: {', '.join(unknown)}; "
                f"known: {', '.join(sorted(settable))}"
            )
        default = f.default_factory()  # type: ignore[misc]
        base = {g.name: getattr(default, g.name) for g in dataclasses.fields(sub) if g.init}
        values[f.name] = _build(sub, {**base, **value}, source, dotted)
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise NLAError(f"bad {source} for {cls.__name__}{in_section}: {e}") from e


def fill_section(cfg: Any, path: str, **values: Any) -> Any:
    """Section ``path`` of ``cfg`` (dotted: ``selftext.ar``) with its managed fields set to ``values``.

    ``values`` must name exactly the managed fields, so the declaration and the code that fills them agree.
    """
    obj, managed = cfg, {}
    for name in path.split("."):
        field = next(f for f in dataclasses.fields(obj) if f.name == name and f.metadata.get("section"))
        obj, managed = getattr(obj, name), field.metadata["managed"]
    if set(values) != set(managed):
        raise TypeError(f"section {path} manages {sorted(managed)}; got {sorted(values)}")
    return dataclasses.replace(obj, **{k: str(v) if isinstance(v, Path) else v for k, v in values.items()})


def flag_values(cls: type, ns: argparse.Namespace) -> dict[str, Any]:
    """The options of ``cls`` given as flags in ``ns`` (dotted dests of sections nested into mappings)."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return nest({k: v for k, v in vars(ns).items() if k.split(".")[0] in names})


def config_from_args(cls: type[T], ns: argparse.Namespace) -> T:
    """Merge defaults, the optional ``--config`` YAML and explicit flags into a ``cls`` instance."""
    values: dict[str, Any] = {}
    cfg_path = getattr(ns, "config", None)
    if cfg_path is not None:
        values = load_yaml(cfg_path)
    values = merge(values, flag_values(cls, ns))
    return make_config(cls, values, source=f"--config {cfg_path}" if cfg_path else "option")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config dataclass (paths become strings; sections become nested dicts
    without their managed fields, so the dict loads back as a config)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.metadata.get("section"):
            out[f.name] = {k: x for k, x in config_to_dict(v).items() if k not in f.metadata["managed"]}
        else:
            out[f.name] = str(v) if isinstance(v, Path) else copy.deepcopy(v)
    return out
