"""Sidecars and datasets shaped like the official NLA code's, written field by field for the tests.

Each builder follows one official writer or file (kitft/natural_language_autoencoders @047eb8e), read for
its fields only; the values are the tests' own:

- :func:`training_sidecar`: ``nla/config.py`` ``write_model_sidecar`` (schema 2: role actor|critic,
  numeric scales, ``tokens`` with ``critic_suffix_ids``, ``prompt_templates.actor|critic``, a ``critic``
  block only when the critic layer is known, no ``extraction.layer_index``);
- :func:`release_sidecar`: ``release/hf_stage_and_scrub.py`` applied to it (role av|ar, templates av|ar,
  top-level ``extraction_layer_index``, public base name; some reconstructors carry no ``critic`` block);
- :func:`docs_ar_sidecar`: the AR example of ``docs/inference.md`` (``ar.num_hidden_layers: K``);
- :func:`dataset_sidecar`: ``nla/datagen/sidecar.py`` ``NLADatasetMeta`` (schema 1);
- :func:`official_reader_accepts`: the checks of its ``deserialize_sidecar`` (kind, schema_version,
  exact ``NLAExtractionMeta`` / ``NLATokenMeta`` fields), restated;
- :func:`write_stage_parquet`: the columns of ``stage0_extract`` / ``stage2`` / ``stage3_build``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

OFFICIAL_CRITIC_TEMPLATE = "Summary of the following text: <text>{explanation}</text> <summary>"
EXTRACTION_FIELDS = {"base_model", "d_model", "layer_index", "norm", "corpus", "corpus_slice", "positions_per_doc"}
TOKEN_FIELDS = {
    "injection_char",
    "injection_token_id",
    "injection_left_neighbor_id",
    "injection_right_neighbor_id",
    "critic_suffix_ids",
}


def suffix_ids(tokenizer: Any, template: str) -> list[int]:
    """``compute_critic_suffix_ids``: the template's suffix tokens without the first."""
    return tokenizer(template.split("{explanation}")[-1], add_special_tokens=False)["input_ids"][1:]


def training_sidecar(
    role: str,
    *,
    d_model: int,
    marker: Any,
    actor_template: str,
    critic_template: str,
    critic_suffix: list[int] | None,
    injection_scale: float | None,
    critic_layer: int | None,
) -> dict[str, Any]:
    """``write_model_sidecar`` for ``role`` actor or critic."""
    meta: dict[str, Any] = {
        "kind": "nla_model",
        "schema_version": 2,
        "role": role,
        "stage": "sft",
        "base_checkpoint": "/checkpoints/base",
        "d_model": d_model,
        "extraction": {"injection_scale": injection_scale, "mse_scale": math.sqrt(d_model)},
        "tokens": {
            "injection_char": marker.char,
            "injection_token_id": marker.token_id,
            "injection_left_neighbor_id": marker.left_neighbor_id,
            "injection_right_neighbor_id": marker.right_neighbor_id,
            "critic_suffix_ids": critic_suffix,
        },
        "prompt_templates": {"actor": actor_template, "critic": critic_template},
        "trained_on": ["data/av_sft.parquet"],
        "parent_checkpoints": ["/checkpoints/base"],
        "created_at": "2026-01-01T00:00:00+00:00",
        "created_by": "nla.train_actor",
    }
    if critic_layer is not None:
        meta["critic"] = {"extraction_layer_index": critic_layer}
    return meta


def release_sidecar(
    training: dict[str, Any], *, base_model: str, layer: int, keep_critic: bool = True
) -> dict[str, Any]:
    """``stage_and_scrub`` of a training-time sidecar (optionally without the critic block)."""
    d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in training.items()}
    d["role"] = {"actor": "av", "critic": "ar"}.get(d.get("role"), d.get("role"))
    d["base_checkpoint"] = base_model
    d["parent_checkpoints"] = [base_model]
    d["trained_on"] = ["a public corpus"]
    d["extraction_layer_index"] = layer
    pt = d.get("prompt_templates", {})
    if "actor" in pt:
        pt["av"] = pt.pop("actor")
    if "critic" in pt:
        pt["ar"] = pt.pop("critic")
    if not keep_critic:
        d.pop("critic", None)
    return d


def docs_ar_sidecar(*, d_model: int, layer: int, critic_suffix: list[int]) -> dict[str, Any]:
    """The AR sidecar example of the official docs/inference.md."""
    return {
        "kind": "nla_model",
        "role": "ar",
        "d_model": d_model,
        "extraction": {"mse_scale": math.sqrt(d_model)},
        "ar": {"num_hidden_layers": layer},
        "tokens": {"critic_suffix_ids": critic_suffix},
        "prompt_templates": {"ar": OFFICIAL_CRITIC_TEMPLATE},
    }


def dataset_sidecar(
    stage: str,
    *,
    base_model: str,
    d_model: int,
    layer: int,
    rows: int,
    tokens: dict[str, Any] | None = None,
    templates: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``serialize_sidecar`` of an ``NLADatasetMeta`` (None-valued top-level keys dropped)."""
    meta: dict[str, Any] = {
        "dataset_id": f"{stage}_abcd1234",
        "stage": stage,
        "row_count": rows,
        "extraction": {
            "base_model": base_model,
            "d_model": d_model,
            "layer_index": layer,
            "norm": "none",
            "corpus": "tiny-corpus",
            "corpus_slice": {"start": 0, "length": rows},
            "positions_per_doc": 2,
        },
        "kind": "nla_dataset",
        "schema_version": 1,
        "keep_debug_metadata": True,
        "prompt_templates": templates or {},
        "parent_datasets": [],
        "created_at": "2026-01-01T00:00:00+00:00",
        "created_by": "nla.datagen.stage3_build",
        "git_commit": "",
    }
    if tokens is not None:
        meta["tokens"] = tokens
    return meta


def official_reader_accepts(meta: dict[str, Any]) -> None:
    """What ``deserialize_sidecar`` checks before it builds ``NLADatasetMeta`` (AssertionError/TypeError)."""
    assert meta["kind"] == "nla_dataset", meta["kind"]
    assert meta["schema_version"] == 1, meta.get("schema_version")
    for key in ("dataset_id", "stage", "row_count", "extraction"):
        assert key in meta, key
    if set(meta["extraction"]) != EXTRACTION_FIELDS:  # NLAExtractionMeta(**d["extraction"])
        raise TypeError(f"extraction fields {sorted(meta['extraction'])} != {sorted(EXTRACTION_FIELDS)}")
    if meta.get("tokens") is not None and not set(meta["tokens"]) <= TOKEN_FIELDS:
        raise TypeError(f"tokens fields {sorted(meta['tokens'])}")


PROMPT_STRUCT = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def write_stage_parquet(
    path: Path,
    stage: str,
    vectors: list[list[float]],
    texts: list[str],
    meta: dict[str, Any],
    *,
    prompt: Any = None,
    doc_prefix: str = "doc",
) -> Path:
    """A parquet with the columns an official stage writes, and its sidecar.

    ``stage``: ``stage2`` (base rows + ``api_explanation``), ``ar_sft`` (templated ``prompt`` strings),
    ``av_sft`` (chat ``prompt`` with ``<INJECT>`` + wrapped ``response``). ``texts`` are the explanations.
    """
    d = len(vectors[0])
    n = len(vectors)
    cols: dict[str, Any] = {}
    if stage == "stage2":
        cols["api_explanation"] = pa.array(texts, pa.string())
    elif stage == "ar_sft":
        tmpl = (meta.get("prompt_templates") or {}).get("critic", OFFICIAL_CRITIC_TEMPLATE)
        cols["prompt"] = pa.array([tmpl.format(explanation=t) for t in texts], pa.string())
    elif stage == "av_sft":
        cols["prompt"] = pa.array([[{"role": "user", "content": prompt}]] * n, PROMPT_STRUCT)
        cols["response"] = pa.array([f"<explanation>\n{t}\n</explanation>" for t in texts], pa.string())
    else:
        raise ValueError(stage)
    cols["activation_vector"] = pa.array(vectors, pa.list_(pa.float32(), d))
    cols["n_raw_tokens"] = pa.array([60 + i for i in range(n)], pa.int64())
    cols["activation_layer"] = pa.array([meta["extraction"]["layer_index"]] * n, pa.int64())
    cols["doc_id"] = pa.array([f"{doc_prefix}{i // 2}" for i in range(n)], pa.string())
    if stage == "stage2":
        cols["detokenized_text_truncated"] = pa.array([f"context {i}" for i in range(n)], pa.string())
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)
    write_yaml(Path(str(path) + ".nla_meta.yaml"), meta)
    return path


def write_yaml(path: Path, meta: dict[str, Any], *, release: bool = False) -> None:
    """``yaml.safe_dump`` like the official writers; release files use ``yaml.dump`` (hf_stage_and_scrub)."""
    dump = yaml.dump if release else yaml.safe_dump
    path.write_text(dump(meta, sort_keys=False, allow_unicode=True), encoding="utf-8")
