"""The ``nla_meta.yaml`` sidecar contract shared with the official NLA release.

A dataset is ``<file>.parquet`` plus ``<file>.parquet.nla_meta.yaml`` (``kind: nla_dataset``); a
checkpoint is an HF model directory plus ``nla_meta.yaml`` (``kind: nla_model``). Scale values are a
float, the string ``"sqrt_d_model"``, or null (raw); an absent scale means ``"sqrt_d_model"``.
Released sidecars say ``role: av|ar`` and ``prompt_templates.av|ar``; training-time ones say
``actor|critic``: :func:`template` accepts both. The extraction layer is stated in one of several places
depending on who wrote the sidecar; :func:`layer_index` reads them all (docs/interop.md).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from nla.common.errors import NLAError
from nla.common.paths import atomic_write_text

SIDECAR_SUFFIX = ".nla_meta.yaml"
MODEL_SIDECAR = "nla_meta.yaml"
MODEL_SCHEMA_VERSION = 2  # the official writer's nla_model schema (nla/config.py write_model_sidecar)
DATASET_SCHEMA_VERSION = 1  # the official nla_dataset schema (nla/datagen/sidecar.py); its reader asserts it
DEFAULT_AR_TEMPLATE = "Summary of the following text: <text>{explanation}</text> <summary>"
_ROLE_ALIASES = {"av": ("av", "actor"), "actor": ("av", "actor"), "ar": ("ar", "critic"), "critic": ("ar", "critic")}


def dataset_sidecar_path(parquet: Path) -> Path:
    return Path(str(parquet) + SIDECAR_SUFFIX)


def write_sidecar(path: Path, meta: dict[str, Any]) -> None:
    atomic_write_text(Path(path), yaml.safe_dump(meta, sort_keys=False, allow_unicode=True))


def read_sidecar(path: Path, *, kind: str | None = None) -> dict[str, Any]:
    """Read a sidecar with ``yaml.safe_load``; check ``kind`` when given."""
    path = Path(path)
    if not path.exists():
        raise NLAError(f"missing NLA sidecar {path}")
    try:
        meta = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise NLAError(f"sidecar {path} is not valid YAML: {e}") from e
    if not isinstance(meta, dict):
        raise NLAError(f"sidecar {path} must be a mapping")
    if kind is not None and meta.get("kind", kind) != kind:
        raise NLAError(f"sidecar {path} has kind {meta.get('kind')!r}, expected {kind!r}")
    return meta


def read_model_sidecar(model_dir: Path) -> dict[str, Any]:
    return read_sidecar(Path(model_dir) / MODEL_SIDECAR, kind="nla_model")


def resolve_scale(value: Any, d_model: int, *, absent_default: Any = "sqrt_d_model") -> float | None:
    """Turn a sidecar scale (float, ``"sqrt_d_model"``, null) into a float or None (raw vectors)."""
    if value is _ABSENT:
        value = absent_default
    if value is None:
        return None
    if isinstance(value, str):
        if value == "sqrt_d_model":
            return math.sqrt(d_model)
        try:
            return float(value)
        except ValueError as e:
            raise NLAError(f"bad scale value {value!r}: expected a number, 'sqrt_d_model' or null") from e
    return float(value)


class _Absent:
    pass


_ABSENT: Any = _Absent()


def extraction_scale(meta: dict[str, Any], key: str) -> float | None:
    """``extraction.<key>`` (``injection_scale`` or ``mse_scale``) resolved against ``d_model``."""
    ext = meta.get("extraction") or {}
    return resolve_scale(ext.get(key, _ABSENT), int(meta["d_model"]))


def template(meta: dict[str, Any], role: str) -> str | None:
    """The prompt template for ``role`` (av/actor or ar/critic), whichever name the sidecar uses."""
    temps = meta.get("prompt_templates") or {}
    for name in _ROLE_ALIASES[role]:
        if name in temps:
            return str(temps[name])
    return None


def _int_or_none(value: Any, where: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError) as e:
        raise NLAError(f"sidecar {where} must be an integer, got {value!r}") from e


def layer_index(meta: dict[str, Any]) -> int | None:
    """The extraction layer L (output of block L), from wherever the sidecar states it; None if nowhere.

    Places, all meaning the same L: ``extraction.layer_index`` (nla, official dataset sidecars), the
    top-level ``extraction_layer_index`` (official release files, ``hf_stage_and_scrub.py``),
    ``critic.extraction_layer_index`` (official schema 2), ``critic.num_hidden_layers`` when the former
    is absent (official schema 1 stored L under that name) and ``ar.num_hidden_layers`` (the example in
    the official docs/inference.md). Two places that disagree are an error.
    """
    ext = meta.get("extraction") or {}
    critic = meta.get("critic") or {}
    ar_block = meta.get("ar") if isinstance(meta.get("ar"), dict) else {}
    found: dict[str, int] = {}
    for where, value in (
        ("extraction.layer_index", ext.get("layer_index")),
        ("extraction_layer_index", meta.get("extraction_layer_index")),
        ("critic.extraction_layer_index", critic.get("extraction_layer_index")),
        (
            "critic.num_hidden_layers",
            critic.get("num_hidden_layers") if "extraction_layer_index" not in critic else None,
        ),
        ("ar.num_hidden_layers", ar_block.get("num_hidden_layers")),
    ):
        layer = _int_or_none(value, where)
        if layer is not None:
            found[where] = layer
    if len(set(found.values())) > 1:
        raise NLAError(f"the sidecar states different layers: {found}")
    return next(iter(found.values()), None)


def base_model(meta: dict[str, Any]) -> str:
    """The base (target) model: ``extraction.base_model``, else the official ``base_checkpoint``; '' if neither."""
    ext = meta.get("extraction") or {}
    return str(ext.get("base_model") or meta.get("base_checkpoint") or "")


def d_model(meta: dict[str, Any]) -> int | None:
    """``d_model`` (model sidecars, nla datasets) or ``extraction.d_model`` (official datasets); None if absent."""
    value = meta.get("d_model", (meta.get("extraction") or {}).get("d_model"))
    return _int_or_none(value, "d_model")


def suffix_matches(recorded: list[int], suffix_ids: list[int]) -> bool:
    """Whether sidecar ``critic_suffix_ids`` fit the live tokenisation ``suffix_ids`` of the AR template's
    suffix: either all of it (nla before 2026-12) or all but the first token (the official convention:
    ``compute_critic_suffix_ids`` drops the token that can merge with the explanation's last character)."""
    rec = [int(i) for i in recorded]
    return rec == list(suffix_ids) or (len(suffix_ids) > 1 and rec == list(suffix_ids[1:]))


def official_suffix_ids(suffix_ids: list[int]) -> list[int]:
    """The official ``critic_suffix_ids``: the suffix tokens without the first (BPE-boundary) one."""
    return [int(i) for i in suffix_ids[1:]]
