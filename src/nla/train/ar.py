"""AR-SFT: train the activation reconstructor on teacher explanations (``nla train ar``).

Input: two teacher parquet files (columns ``activation_vector`` raw list<float32> and ``explanation``;
``doc_id`` used to check that train and eval are document-disjoint) with their ``.nla_meta.yaml``
sidecars, which give the default base model and layer. Official datasets work too: stage-2 output
(``api_explanation``) and AR-SFT files (a templated ``prompt``, unwrapped with the sidecar's AR template,
which then also becomes the AR's template; :mod:`nla.data.official`). Loss: ``mse_nrm(AR(explanation), vector)``
(both normalised to sqrt(d)). Rows whose vector is NaN/inf/zero or whose explanation is empty are
skipped and counted.

Held-out evaluation (:func:`evaluate_ar`) reports ``fve_nrm`` beside its controls: predict-the-mean
(the normalised training mean, ~0 by construction), shuffled pairs, the empty explanation, random
Gaussian predictions; plus cosine and retrieval top-1 among 8.

    nla train ar --data ar_train.parquet --eval-data ar_eval.parquet --out-dir runs/ar --max-steps 200
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nla.common import meta
from nla.common.config import config_to_dict, option
from nla.common.errors import NLAError
from nla.common.paths import atomic_write_text
from nla.core import metrics
from nla.core.modules import find_decoder_layers
from nla.data.activations import VECTOR_COL, activation_matrix, check_same_source, load_vectors, read_parquet
from nla.data.official import TEXT_COLUMNS, explanation_texts
from nla.evaluate.roundtrip import Baseline, evaluate_ar, format_eval
from nla.models.ar import ActivationReconstructor
from nla.models.target import load_target
from nla.train.loop import TrainConfig, TrainResult, fit

log = logging.getLogger(__name__)

TEXT_COL, DOC_COL = "explanation", "doc_id"


@dataclass
class ARTrainConfig(TrainConfig):
    """Options of ``nla train ar`` (plus the shared training-loop options)."""

    out_dir: str = option("runs/ar", "Run directory: metrics.jsonl, checkpoint/ (resume) and final/ (the AR).")
    data: str = option(
        "",
        "Teacher parquet for training (columns activation_vector, explanation); several, "
        "comma-separated, are trained on together (e.g. a few `nla verbalize` outputs).",
    )
    eval_data: str = option("", "Teacher parquet for held-out evaluation (document-disjoint from --data).")
    baseline_data: str = option(
        "",
        "Activations whose normalised mean gives the baseline B stored with the AR "
        "(parquet or `nla extract` dir, its ar_sft split); default: the --data rows. Use "
        "the full training split when --data is a subset (a refit), so B matches the card.",
    )
    model: str | None = option(None, "Base model (default: extraction.base_model of the data sidecar).")
    layer: int | None = option(None, "Layer L the vectors come from (default: extraction.layer_index of the sidecar).")
    template: str = option(meta.DEFAULT_AR_TEMPLATE, "AR prompt template with an {explanation} placeholder.")
    init: str = option(
        "",
        "Start from this AR checkpoint (full or adapter-only; its template and layer) "
        "instead of a fresh copy of the target, e.g. to refit an AR on AV explanations.",
    )
    lora: bool = option(False, "Train LoRA adapters (+ the head) instead of the full backbone.")
    lora_r: int = option(16, "LoRA rank.")
    lora_alpha: float = option(32.0, "LoRA alpha.")
    lora_dropout: float = option(0.0, "LoRA dropout.")
    train_last_n_layers: int | None = option(
        None, "Freeze embeddings and all blocks but the last n (CPU speed option); unset = full fine-tune."
    )
    max_length: int = option(256, "Max tokens of a templated explanation (the explanation is cut, never the template).")
    eval_batch_size: int = option(32, "Batch size of held-out evaluation.")
    eval_max_rows: int = option(0, "Evaluate on at most this many held-out rows (0 = all).")
    save_adapter_only: bool = option(
        False, "With --lora: save final/ as the adapter + head + base-model pointer (compact)."
    )
    dtype: str = option("float32", "Weights dtype of the AR.", choices=["float32", "bfloat16", "float16"])


@dataclass
class ARData:
    explanations: list[str]
    vectors: torch.Tensor  # (N, d) float32, raw
    skipped: dict[str, int]  # reason -> rows dropped
    doc_ids: list[Any] | None
    sidecar: dict[str, Any]


def load_ar_data(path: str | Path, *, d_model: int | None = None) -> ARData:
    """Read a teacher parquet; drop (and count) rows with non-finite/zero vectors or empty explanations."""
    path = Path(path)
    data = read_parquet(path, columns=[VECTOR_COL, *TEXT_COLUMNS, DOC_COL], require=[VECTOR_COL])
    table, sidecar = data.table, data.sidecar
    if table.num_rows == 0:
        raise NLAError(f"{path} has no rows")
    found = explanation_texts(table, sidecar, str(path))
    if found is None:
        raise NLAError(
            f"{path} lacks an explanation column (explanation, api_explanation, or an official AR-SFT prompt); "
            f"has: {', '.join(table.column_names)}"
        )
    vectors, no_vector = activation_matrix(table, str(path))
    nulls = torch.from_numpy(table.column(VECTOR_COL).is_null().to_numpy(zero_copy_only=False))
    if bool((no_vector & ~nulls).any()):
        lengths = {len(v) for v in table.column(VECTOR_COL).to_pylist() if v is not None}
        raise NLAError(f"{path}: activation vectors have different lengths {sorted(lengths)}")
    side_d = meta.d_model(sidecar)
    d = vectors.shape[1] or int(side_d or 0)
    if d_model is not None and d != d_model:
        raise NLAError(f"{path}: vectors have d={d} but the model has d_model={d_model}")
    if side_d is not None and side_d != d:
        raise NLAError(f"{path}: sidecar says d_model={side_d} but the vectors have d={d}")
    texts = found[0]
    bad_vec = ~torch.isfinite(vectors).all(-1) | nulls
    zero = (vectors.abs().sum(-1) == 0) & ~bad_vec
    empty = torch.tensor([not t.strip() for t in texts], dtype=torch.bool)
    keep = ~(bad_vec | zero | empty)
    skipped = {
        "nonfinite_vector": int(bad_vec.sum()),
        "zero_vector": int(zero.sum()),
        "empty_explanation": int((empty & ~bad_vec & ~zero).sum()),
    }
    idx = keep.nonzero().squeeze(-1).tolist()
    doc_ids = table.column(DOC_COL).to_pylist() if DOC_COL in table.column_names else None
    if sum(skipped.values()):
        log.warning("%s: skipped %d of %d rows (%s)", path.name, sum(skipped.values()), len(texts), skipped)
    return ARData(
        explanations=[texts[i] for i in idx],
        vectors=vectors[keep].contiguous(),
        skipped=skipped,
        doc_ids=[doc_ids[i] for i in idx] if doc_ids is not None else None,
        sidecar=sidecar,
    )


def load_ar_parts(paths: str, *, d_model: int | None = None) -> ARData:
    """:func:`load_ar_data` of each comma-separated path, concatenated; their sidecars must name the same
    base model and layer (the first sidecar is kept)."""
    parts = [load_ar_data(p.strip(), d_model=d_model) for p in paths.split(",") if p.strip()]
    if not parts:
        raise NLAError(f"no data file in {paths!r}")
    first = parts[0]
    if len(parts) == 1:
        return first
    names = [p.strip() for p in paths.split(",") if p.strip()]
    check_same_source([(n, p.sidecar, p.vectors.shape[1]) for n, p in zip(names, parts, strict=True)])
    docs = None if any(p.doc_ids is None for p in parts) else [d for p in parts for d in p.doc_ids or []]
    return ARData(
        explanations=[e for p in parts for e in p.explanations],
        vectors=torch.cat([p.vectors for p in parts]),
        skipped={k: sum(p.skipped[k] for p in parts) for k in first.skipped},
        doc_ids=docs,
        sidecar=first.sidecar,
    )


def _resolve_model_and_layer(cfg: ARTrainConfig, sidecar: dict[str, Any]) -> tuple[str, int]:
    model = cfg.model or meta.base_model(sidecar)
    layer = cfg.layer if cfg.layer is not None else meta.layer_index(sidecar)
    if not model:
        raise NLAError("no base model: pass --model or give the data a sidecar with extraction.base_model")
    if layer is None:
        raise NLAError("no layer: pass --layer or give the data a sidecar with extraction.layer_index")
    return str(model), int(layer)


def build_ar(cfg: ARTrainConfig, model: str, layer: int) -> ActivationReconstructor:
    """The AR to train: copied from the target, with LoRA or partial freezing as configured."""
    if cfg.lora and cfg.train_last_n_layers is not None:
        raise NLAError("choose one of --lora and --train-last-n-layers")
    if cfg.init:
        ar = ActivationReconstructor.from_pretrained(cfg.init, dtype=cfg.dtype, trainable=True)
        if ar.layer != layer:
            raise NLAError(f"--init {cfg.init} reads layer {ar.layer} but the data comes from layer {layer}")
        if cfg.lora and ar.has_lora:
            raise NLAError(f"--init {cfg.init} already has LoRA adapters (they train); drop --lora")
    else:
        target = load_target(model, dtype=cfg.dtype)
        ar = ActivationReconstructor.from_target(target, target.check_layer(layer), template=cfg.template)
        del target
    ar.max_length = cfg.max_length
    if cfg.lora:
        ar.enable_lora(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout)
    elif cfg.train_last_n_layers is not None:
        n = cfg.train_last_n_layers
        if not 1 <= n <= layer + 1:
            raise NLAError(f"--train-last-n-layers must be in 1..{layer + 1}, got {n}")
        ar.backbone.requires_grad_(False)
        for block in find_decoder_layers(ar.backbone, layer + 1)[layer + 1 - n :]:
            block.requires_grad_(True)
        ar.head.requires_grad_(True)
    ar.train()
    return ar


def ar_batches(ar: ActivationReconstructor, data: ARData, batch_size: int, seed: int):
    """``batches(epoch)`` for :func:`nla.train.loop.fit`: a seeded shuffle per epoch, tokenised lazily."""

    def batches(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        order = torch.randperm(len(data.explanations), generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        for i in range(0, len(order), batch_size):
            rows = order[i : i + batch_size].tolist()
            enc = ar.tokenize([data.explanations[r] for r in rows])
            yield {
                "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"],
                "gold": data.vectors[rows],
            }

    return batches


def ar_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean ``mse_nrm`` of the prediction vs the gold vector (both normalised to sqrt(d))."""
    pred = model(batch["input_ids"], batch["attention_mask"])  # (B, d)
    return metrics.mse_nrm(pred.float(), batch["gold"].float()).mean()


def train_ar(cfg: ARTrainConfig) -> TrainResult:
    """Run AR-SFT end to end; the trained AR lands in ``<out_dir>/final`` (official layout)."""
    if not cfg.data:
        raise NLAError("--data (teacher parquet for training) is required")
    if not cfg.eval_data:
        raise NLAError("--eval-data (held-out teacher parquet, document-disjoint from --data) is required")
    train = load_ar_parts(cfg.data)
    model, layer = _resolve_model_and_layer(cfg, train.sidecar)
    data_template = meta.template(train.sidecar, "ar")
    if data_template and cfg.template == meta.DEFAULT_AR_TEMPLATE and data_template != cfg.template:
        log.info("using the data sidecar's AR template %r", data_template)
        cfg.template = data_template
    held = load_ar_data(cfg.eval_data)
    _check_compatible(train, held, layer)
    torch.manual_seed(cfg.seed)
    ar = build_ar(cfg, model, layer)
    if cfg.save_adapter_only and not ar.has_lora:
        raise NLAError("--save-adapter-only needs LoRA (--lora, or an adapter-only --init)")
    d = ar.d_model
    for name, part in (("--data", train), ("--eval-data", held)):
        if part.vectors.shape[1] != d:
            raise NLAError(f"{name} vectors have d={part.vectors.shape[1]} but {model} has d_model={d}")
        if not part.explanations:
            raise NLAError(f"{name} has no usable rows (skipped: {part.skipped})")
    if cfg.eval_max_rows and len(held.explanations) > cfg.eval_max_rows:
        held.explanations, held.vectors = (
            held.explanations[: cfg.eval_max_rows],
            held.vectors[: cfg.eval_max_rows],
        )
    if cfg.baseline_data:
        base_vectors = load_vectors(cfg.baseline_data, "ar_sft").vectors
        if base_vectors.shape[1] != d:
            raise NLAError(f"--baseline-data vectors have d={base_vectors.shape[1]} but {model} has d_model={d}")
        source = f"mean of the normalised vectors of {cfg.baseline_data}"
    else:
        base_vectors, source = train.vectors, "mean of the normalised training vectors"
    baseline = Baseline.from_train(base_vectors)
    ar.eval_meta = {"baseline_mse": baseline.value, "baseline": source}
    log.info(
        "AR-SFT on %s layer %d: %d train rows, %d eval rows, baseline B=%.4f, %d trainable parameters",
        model, layer, len(train.explanations), len(held.explanations), baseline.value,
        sum(p.numel() for p in ar.parameters() if p.requires_grad),
    )  # fmt: skip
    out_dir = Path(cfg.out_dir)
    run_info = {"model": model, "layer": layer, "config": config_to_dict(cfg), "baseline": baseline.value,
                "train_rows": len(train.explanations), "eval_rows": len(held.explanations),
                "train_skipped": train.skipped, "eval_skipped": held.skipped}  # fmt: skip
    atomic_write_text(out_dir / "run.json", json.dumps(run_info, indent=2) + "\n")

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        return evaluate_ar(m, held.explanations, held.vectors, baseline, batch_size=cfg.eval_batch_size, seed=cfg.seed)

    def save_model(m: torch.nn.Module, path: Path) -> None:
        m.save_pretrained(path, adapter_only=cfg.save_adapter_only)

    result = fit(
        ar,
        ar_loss,
        ar_batches(ar, train, cfg.batch_size, cfg.seed),
        cfg,
        evaluate=evaluate,
        save_model=save_model,
    )
    if result.final_eval:
        log.info("held-out: %s", format_eval(result.final_eval))
    result.extra.update(run_info)
    return result


def _check_compatible(train: ARData, held: ARData, layer: int) -> None:
    held_layer = meta.layer_index(held.sidecar)
    if held_layer is not None and int(held_layer) != layer:
        raise NLAError(f"--eval-data comes from layer {held_layer} but training uses layer {layer}")
    if train.doc_ids is not None and held.doc_ids is not None:
        shared = set(map(str, train.doc_ids)) & set(map(str, held.doc_ids))
        if shared:
            raise NLAError(
                f"train and eval data share {len(shared)} doc_id(s) (e.g. {sorted(shared)[0]!r}): split by document"
            )


__all__ = [
    "ARData",
    "ARTrainConfig",
    "ar_batches",
    "ar_loss",
    "build_ar",
    "load_ar_data",
    "load_ar_parts",
    "train_ar",
]
