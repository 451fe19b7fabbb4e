"""AV-SFT: teach a copy of the target LM to verbalise injected activation vectors (``nla train av``).

Input: teacher output parquet (a file, or a directory of ``*.parquet``) with ``activation_vector``
(raw) and ``response`` (``<explanation>...</explanation>``; built from ``explanation`` when absent),
plus the sidecar ``<file>.nla_meta.yaml`` (``extraction.base_model``, ``extraction.layer_index``,
``d_model``). Official datasets work too: stage-2 output (``api_explanation``) and AV-SFT files, whose
instruction (the chat ``prompt`` column / ``prompt_templates.actor``) and marker (``tokens.injection_*``)
the fresh AV then uses (:mod:`nla.data.official`). Loss: next-token cross-entropy on the response tokens
only (through :func:`nla.train.loop.fit`).

The signal to watch is not the training loss but the held-out NLL gap between the REAL vectors and
SHUFFLED ones (official: ~0.21 nats at 7B): a gap near 0 means the AV ignores the injection.

    nla train av --data teacher/av_sft.parquet --eval-data teacher/eval.parquet --max-steps 300
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nla.common.config import option
from nla.common.errors import NLAError
from nla.common.meta import base_model as base_model_of
from nla.common.meta import d_model as d_model_of
from nla.common.meta import layer_index
from nla.common.paths import atomic_write_text
from nla.core.inject import Marker
from nla.core.metrics import mean_baseline, shuffled
from nla.core.text import wrap_explanation
from nla.data.activations import VECTOR_COL, activation_matrix, check_same_source, read_parquet
from nla.data.official import EXPLANATION_COLUMNS, av_contract, explanation_texts
from nla.models.av import DEFAULT_AV_TEMPLATE, ActivationVerbalizer, default_injection_scale, injection_failed
from nla.models.lora import apply_lora, is_lora
from nla.models.sequences import AVBatch
from nla.models.target import DEFAULT_TARGET, load_target
from nla.train.loop import CHECKPOINT, TrainConfig, TrainResult, fit

log = logging.getLogger(__name__)

INITIAL_EVAL = "initial_eval.json"  # in out_dir: the held-out eval of the untrained AV, for a resumed run


@dataclass
class AVTrainConfig(TrainConfig):
    """Options of ``nla train av`` (AV supervised fine-tuning on teacher explanations)."""

    out_dir: str = option("runs/av", "Run directory: metrics.jsonl, checkpoint/ (resume) and final/ (the AV).")
    data: str = option("", "Teacher parquet (file or directory; several comma-separated): vectors + responses.")
    eval_data: str = option(
        "", "Held-out parquet (document-disjoint); empty = hold out eval_fraction of the documents."
    )
    eval_fraction: float = option(0.1, "Share of documents held out for evaluation when eval_data is empty.")
    eval_rows: int = option(128, "At most this many held-out rows are scored at each evaluation.")
    model: str = option("", "Target model the AV is copied from; empty = extraction.base_model of the data sidecar.")
    layer: int | None = option(None, "Layer the vectors come from; default: extraction.layer_index of the sidecar.")
    injection_scale: float | None = option(
        None, "Norm the injected vector is rescaled to; default: a round number just above the mean training norm."
    )
    template: str = option(DEFAULT_AV_TEMPLATE, "AV instruction; must contain <concept>{injection_char}</concept>.")
    max_response_tokens: int = option(160, "Responses are cut to this many tokens (end-of-turn included).")
    init: str = option(
        "",
        "Start from this AV checkpoint (full, or a LoRA adapter whose adapter then trains) "
        "instead of a fresh copy of the target; its marker, scale and template are kept.",
    )
    lora: bool = option(False, "Train LoRA adapters instead of all weights.")
    lora_r: int = option(16, "LoRA rank.")
    lora_alpha: float = option(32.0, "LoRA alpha.")
    lora_dropout: float = option(0.0, "LoRA dropout.")
    merge_lora: bool = option(False, "Save merged full weights instead of the compact adapter.")
    samples: int = option(3, "Greedy sample explanations logged at each evaluation.")
    sample_tokens: int = option(80, "max_new_tokens of the logged samples.")
    lr: float = option(1e-5, "Peak learning rate of AdamW.")
    batch_size: int = option(8, "Rows per micro-batch (per process).")


@dataclass
class AVData:
    vectors: torch.Tensor  # (N, d) raw
    responses: list[str]
    doc_ids: list[str]
    meta: dict[str, Any]
    skipped: dict[str, int]
    template: str | None = None  # the AV instruction an official dataset was built with
    marker: Marker | None = None  # and its marker (sidecar tokens.injection_*)


def load_av_data(path: str | Path) -> AVData:
    """Read teacher parquet; rows with NaN/inf/zero vectors or empty responses are counted and skipped.
    ``path`` may list several files, comma-separated (same base model and layer): they are concatenated."""
    names = [p.strip() for p in str(path).split(",") if p.strip()]
    if len(names) > 1:
        parts = [load_av_data(n) for n in names]
        check_same_source([(n, p.meta, p.vectors.shape[1]) for n, p in zip(names, parts, strict=True)])
        return AVData(
            torch.cat([p.vectors for p in parts]),
            [r for p in parts for r in p.responses],
            [d for p in parts for d in p.doc_ids],
            parts[0].meta,
            {k: sum(p.skipped[k] for p in parts) for k in parts[0].skipped},
            parts[0].template,
            parts[0].marker,
        )
    data = read_parquet(path, require=[VECTOR_COL])
    table, meta = data.table, data.sidecar
    cols = set(table.column_names)
    if "response" not in cols and not cols & set(EXPLANATION_COLUMNS):
        raise NLAError(
            f"{data.files[0]} lacks the column(s) response (or explanation, api_explanation); "
            f"found {', '.join(sorted(cols))}"
        )
    n = table.num_rows
    vecs, no_vector = activation_matrix(table, str(path))
    d = vecs.shape[1]
    if d == 0:
        raise NLAError(f"{path}: no row has an activation vector")
    side_d = d_model_of(meta)
    if side_d is not None and side_d != d:
        raise NLAError(f"{path}: vectors have {d} dimensions but the sidecar says d_model {side_d}")
    if "response" in cols:
        responses = [(r or "").strip() for r in table.column("response").to_pylist()]
    else:
        texts, _ = explanation_texts(table, meta, str(path)) or ([], "")
        responses = [wrap_explanation(r.strip()) if r.strip() else "" for r in texts]
    template, marker = av_contract(table, meta, str(path))
    # without a doc_id column every row is its own document, named by file so two files never share one
    rows = range(n)
    doc_ids = (
        [str(x) for x in table.column("doc_id").to_pylist()] if "doc_id" in cols else [f"{path}#{i}" for i in rows]
    )
    ok_len = ~no_vector
    skipped = {"wrong_length": int(no_vector.sum())}
    finite = torch.isfinite(vecs).all(-1) & ok_len
    nonzero = vecs.abs().sum(-1) > 0
    # rows an AV wrote (``nla verbalize``) without finishing are not training targets
    finished = [True] * n
    for flag, bad in (("tag_ok", False), ("truncated", True)):
        if flag in cols:
            finished = [f and v is not bad for f, v in zip(finished, table.column(flag).to_pylist(), strict=True)]
    has_resp = torch.tensor([bool(r) for r in responses])
    unfinished = torch.tensor([not f for f in finished], dtype=torch.bool)
    skipped["non_finite"] = int((ok_len & ~torch.isfinite(vecs).all(-1)).sum())
    skipped["zero_vector"] = int((finite & ~nonzero).sum())
    skipped["empty_response"] = int((finite & nonzero & ~has_resp).sum())
    skipped["unfinished_response"] = int((finite & nonzero & has_resp & unfinished).sum())
    keep = finite & nonzero & has_resp & ~unfinished
    if any(skipped.values()):
        log.warning(
            "%s: skipped %d of %d rows (%s)",
            path,
            n - int(keep.sum()),
            n,
            ", ".join(f"{k} {v}" for k, v in skipped.items() if v),
        )
    idx = keep.nonzero().squeeze(-1).tolist()
    if not idx:
        raise NLAError(f"{path}: no usable rows (all {n} skipped: {skipped})")
    return AVData(vecs[keep], [responses[i] for i in idx], [doc_ids[i] for i in idx], meta, skipped, template, marker)


def _subset(data: AVData, rows: list[int]) -> AVData:
    return AVData(
        data.vectors[rows],
        [data.responses[i] for i in rows],
        [data.doc_ids[i] for i in rows],
        data.meta,
        data.skipped,
        data.template,
        data.marker,
    )


def split_by_document(data: AVData, fraction: float, seed: int) -> tuple[AVData, AVData | None]:
    """Hold out ``fraction`` of the documents (at least one when there are two or more)."""
    docs = sorted(set(data.doc_ids))
    if fraction <= 0 or len(docs) < 2:
        return data, None
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(docs)[: max(1, round(fraction * len(docs)))].tolist())
    train = [i for i, doc in enumerate(data.doc_ids) if doc not in held]
    test = [i for i, doc in enumerate(data.doc_ids) if doc in held]
    return _subset(data, train), _subset(data, test)


@torch.no_grad()
def eval_nll_gap(
    av: ActivationVerbalizer,
    vectors: torch.Tensor,
    responses: list[str],
    *,  # (N, d)
    batch_size: int = 8,
    seed: int = 0,
    max_response_tokens: int | None = None,
) -> dict[str, float]:
    """Mean held-out NLL per response token with the real vectors, with shuffled vectors, and the gap."""
    fake = shuffled(vectors, generator=torch.Generator().manual_seed(seed))
    totals = {"real": 0.0, "shuffled": 0.0}
    count = 0
    for start in range(0, vectors.shape[0], batch_size):
        resp = [av.response_ids(r, max_response_tokens) for r in responses[start : start + batch_size]]
        for name, vecs in (("real", vectors), ("shuffled", fake)):
            logp, mask = av.batch_logprobs(av.encode_tokens(vecs[start : start + batch_size], resp))
            totals[name] += float(-logp.sum())
        count += int(mask.sum())
    real, shuf = totals["real"] / count, totals["shuffled"] / count
    return {"nll_real": real, "nll_shuffled": shuf, "nll_gap": shuf - real}


def _batches(av: ActivationVerbalizer, data: AVData, resp_ids: list[list[int]], cfg: AVTrainConfig):
    def make(epoch: int) -> Iterator[AVBatch]:
        order = torch.randperm(len(resp_ids), generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
        for start in range(0, len(order), cfg.batch_size):
            rows = order[start : start + cfg.batch_size].tolist()
            yield av.encode_tokens(data.vectors[rows], [resp_ids[i] for i in rows], device="cpu")

    return make


def _resolve(cfg: AVTrainConfig, meta: dict[str, Any]) -> tuple[str, int | None]:
    model = cfg.model or base_model_of(meta) or DEFAULT_TARGET
    layer = cfg.layer if cfg.layer is not None else layer_index(meta)
    return model, (int(layer) if layer is not None else None)


def train_av(cfg: AVTrainConfig) -> tuple[ActivationVerbalizer, TrainResult]:
    """Run AV-SFT; the final AV is saved to ``out_dir/final`` with :meth:`ActivationVerbalizer.save_pretrained`."""
    if not cfg.data:
        raise NLAError("nla train av needs --data (teacher parquet with activation_vector and response)")
    data = load_av_data(cfg.data)
    if cfg.eval_data:
        train, held = data, load_av_data(cfg.eval_data)
        overlap = set(train.doc_ids) & set(held.doc_ids)
        if overlap:
            raise NLAError(
                f"eval data shares {len(overlap)} documents with the training data (e.g. {sorted(overlap)[0]}); "
                "split by document"
            )
    else:
        train, held = split_by_document(data, cfg.eval_fraction, cfg.seed)
    model_name, layer = _resolve(cfg, data.meta)
    if cfg.init:  # the model, marker, scale and template come from the checkpoint
        av = ActivationVerbalizer.from_pretrained(cfg.init)
        if cfg.lora:
            raise NLAError("--lora needs a fresh AV; a LoRA --init keeps training its own adapter")
        model_name, d_model, layer = av.base_model or cfg.init, av.d_model, av.layer if layer is None else layer
        if av.layer != layer:
            raise NLAError(f"--init {cfg.init} reads layer {av.layer} but the data comes from layer {layer}")
        for name, p in av.model.named_parameters():  # an adapter trains its LoRA factors (and saved norms)
            p.requires_grad_(not is_lora(av.model) or "lora_" in name or "modules_to_save" in name)
        scale = av.injection_scale
    else:
        target = load_target(model_name)
        d_model = target.d_model
        layer = target.default_layer if layer is None else layer
        scale = cfg.injection_scale if cfg.injection_scale is not None else default_injection_scale(train.vectors)
    for name, part in (("", train), ("eval ", held)):
        if part is not None and part.vectors.shape[1] != d_model:
            raise NLAError(
                f"the {name}vectors have {part.vectors.shape[1]} dimensions but {model_name} has d_model {d_model}"
            )
    log.info(
        "AV-SFT on %d rows (%d docs), eval %d rows; target %s layer %d, injection scale %g (mean norm %.1f)%s",
        len(train.responses),
        len(set(train.doc_ids)),
        0 if held is None else len(held.responses),
        model_name,
        layer,
        scale,
        float(train.vectors.norm(dim=-1).mean()),
        f", from {cfg.init}" if cfg.init else "",
    )
    if not cfg.init:
        template, marker = cfg.template, None
        if data.template and cfg.template == DEFAULT_AV_TEMPLATE:  # an official dataset states its instruction
            template, marker = data.template, data.marker
            log.info("using the data's AV instruction%s", f" and marker {marker.char!r}" if marker else "")
        av = ActivationVerbalizer.from_target(
            target,
            injection_scale=scale,
            layer=layer,
            template=template,
            marker=marker,
            corpus_texts=train.responses[:2000],
        )
        del target
        if cfg.lora:
            av.model = apply_lora(av.model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout)
        else:
            av.model.requires_grad_(True)
    av.eval_meta = {"baseline_mse": mean_baseline(train.vectors), "baseline": "mean of the normalised training vectors"}
    resp_ids = [av.response_ids(r, cfg.max_response_tokens) for r in train.responses]
    cut = sum(len(x) >= cfg.max_response_tokens for x in resp_ids)
    if cut:
        log.warning(
            "%d of %d responses were cut to max_response_tokens=%d", cut, len(resp_ids), cfg.max_response_tokens
        )

    evaluate = None
    initial: dict[str, float] = {}
    if held is not None:
        ev_vecs, ev_resp = held.vectors[: cfg.eval_rows], held.responses[: cfg.eval_rows]

        def evaluate(model: nn.Module) -> dict[str, float]:
            av.model = model
            out = eval_nll_gap(
                av,
                ev_vecs,
                ev_resp,
                batch_size=cfg.batch_size,
                seed=cfg.seed,
                max_response_tokens=cfg.max_response_tokens,
            )
            log.info(
                "held-out NLL: real %.4f, shuffled %.4f, gap %.4f nats",
                out["nll_real"],
                out["nll_shuffled"],
                out["nll_gap"],
            )
            if cfg.samples > 0:
                texts = [s[0] for s in av.generate(ev_vecs[: cfg.samples], max_new_tokens=cfg.sample_tokens)]
                for i, text in enumerate(texts):
                    log.info("sample %d: %s", i, text.replace("\n", " ")[:400])
                out["cjk_failure"] = float(injection_failed(texts))
            return out

        first = Path(cfg.out_dir) / INITIAL_EVAL  # a resumed run does not evaluate the untrained AV again
        if first.exists() and (Path(cfg.out_dir) / CHECKPOINT).exists():
            initial = json.loads(first.read_text(encoding="utf-8"))
            log.info("held-out NLL before training (first attempt): %s", initial)
        else:
            av.model.eval()
            initial = evaluate(av.model)
            first.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(first, json.dumps(initial) + "\n")

    def loss_fn(model: nn.Module, batch: AVBatch) -> torch.Tensor:
        return av.sft_loss(batch, model=model)

    def save_model(model: nn.Module, path: Path) -> None:
        av.model = model
        av.save_pretrained(path, merge_lora=cfg.merge_lora)

    result = fit(av.model, loss_fn, _batches(av, train, resp_ids, cfg), cfg, evaluate=evaluate, save_model=save_model)
    result.extra.update(
        {
            "skipped_rows": data.skipped,
            "injection_scale": scale,
            "layer": layer,
            "initial_eval": initial,
            "train_rows": len(train.responses),
        }
    )
    if result.final_eval and not math.isfinite(result.final_eval.get("nll_gap", 0.0)):
        log.warning("the final NLL gap is not finite")
    return av, result


__all__ = ["AVData", "AVTrainConfig", "eval_nll_gap", "load_av_data", "split_by_document", "train_av"]
