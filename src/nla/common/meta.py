"""The ``nla_meta.yaml`` sidecar contract shared with the official NLA release.

A dataset is ``<file>.parquet`` plus ``<file>.parquet.nla_meta.yaml`` (``kind: nla_dataset``); a
checkpoint is an HF model directory plus ``nla_meta.yaml`` (``kind: nla_model``). Scale values are a
float, the string ``"sqrt_d_model"``, or null (raw); an absent scale means ``"sqrt_d_model"``.
Released sidecars say ``role: av|ar`` and ``prompt_templates.av|ar``; training-time ones say
``actor|critic``: :func:`template` accepts both.
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
