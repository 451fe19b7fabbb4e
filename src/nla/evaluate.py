"""Round-trip evaluation of an AV + AR pair and the evaluation card (``nla eval``).

Round trip: the AV writes a greedy explanation of each held-out vector, the AR reconstructs the vector
from it, and :func:`nla.train_ar.evaluate_ar` scores the reconstruction (``fve_nrm`` beside the controls:
shuffled vectors, the empty explanation, random Gaussian vectors, the mean predictor; retrieval top-1
among 8). :func:`evaluation_card` puts the stage ladder on one page: AR-SFT on teacher text -> AV-SFT
round trip -> after RL (current AR and frozen SFT AR), plus length / tag-failure stats and examples.

    nla eval --av runs/rl/final/av --ar runs/rl/final/ar --sft-av runs/av/final --sft-ar runs/ar/final \\
        --data runs/teach/eval.parquet --train-data runs/teach/ar_sft.parquet --out card.json
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from nla.activations import read_split
from nla.activations import vectors as table_vectors
from nla.av import Responses
from nla.config import option
from nla.errors import NLAError
from nla.meta import MODEL_SIDECAR
from nla.paths import atomic_write_text
from nla.text import cjk_fraction, text_for_ar

log = logging.getLogger(__name__)


@dataclass
class VectorSet:
    vectors: torch.Tensor  # (N, d) raw
    doc_ids: list[str]
    contexts: list[str] | None  # detokenized_text_truncated, when present
    explanations: list[str] | None  # teacher explanations, when present


def load_vectors(path: str | Path, split: str = "eval") -> VectorSet:
    """Activations from an ``nla extract`` directory (one split) or a parquet file / directory of parquet."""
    p = Path(path)
    if (p / MODEL_SIDECAR).exists() and (p / split).is_dir():
        table = read_split(p, split)
    elif p.is_dir():
        files = sorted(p.glob("*.parquet"))
        if not files:
            raise NLAError(f"{p} is neither an `nla extract` directory with a {split} split nor a folder of parquet")
        table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    elif p.exists():
        table = pq.read_table(p)
    else:
        raise NLAError(f"activation data not found: {p}")
    if "activation_vector" not in table.column_names or table.num_rows == 0:
        raise NLAError(f"{p} has no rows with an activation_vector column")
    vecs = table_vectors(table)
    keep = torch.isfinite(vecs).all(-1) & (vecs.abs().sum(-1) > 0)
    rows = keep.nonzero().squeeze(-1).tolist()
    if len(rows) < vecs.shape[0]:
        log.warning("%s: skipped %d rows with non-finite or zero vectors", p, vecs.shape[0] - len(rows))

    def col(name: str) -> list[str] | None:
        if name not in table.column_names:
            return None
        values = table.column(name).to_pylist()
        return [str(values[i] or "") for i in rows]

    doc_ids = col("doc_id") or [str(i) for i in rows]
    return VectorSet(vecs[keep], doc_ids, col("detokenized_text_truncated"), col("explanation"))


def response_stats(resp: Responses) -> dict[str, float]:
    """Length distribution (tokens), tag-failure, truncation, valid and CJK rates of responses."""
    n = max(1, len(resp.texts))
    lengths = torch.tensor([float(len(x)) for x in resp.ids]) if resp.ids else torch.zeros(1)
    valid = [e is not None and not c for e, c in zip(resp.explanations, resp.truncated, strict=True)]
    return {
        "len_mean": float(lengths.mean()),
        "len_p50": float(lengths.quantile(0.5)),
        "len_p90": float(lengths.quantile(0.9)),
        "len_max": float(lengths.max()),
        "tag_failure_rate": sum(e is None for e in resp.explanations) / n,
        "truncation_rate": sum(resp.truncated) / n,
        "valid_rate": sum(valid) / n,
        "cjk_rate": sum(cjk_fraction(t) for t in resp.texts) / n,
    }


def round_trip(
    av: Any,
    ar: Any,
    vectors: torch.Tensor,  # (N, d) held-out raw vectors
    baseline: Any,
    *,
    responses: Responses | None = None,
    max_new_tokens: int = 150,
    batch_size: int = 16,
    k: int = 8,
    seed: int = 0,
) -> tuple[dict[str, float], Responses]:
    """Greedy AV explanations (or the given ``responses``) scored by ``ar`` with all controls."""
    from nla.train_ar import evaluate_ar

    if responses is None:
        responses = av.sample(vectors, max_new_tokens=max_new_tokens, batch_size=batch_size)
    metrics = evaluate_ar(ar, [text_for_ar(t) for t in responses.texts], vectors, baseline, k=k, seed=seed)
    metrics.update(response_stats(responses))
    return metrics, responses


# ----------------------------------------------------------------------------------------- the card


@dataclass
class EvalConfig:
    """Options of ``nla eval`` (the evaluation card)."""

    av: str = option("", "Final AV checkpoint (e.g. runs/rl/final/av).")
    ar: str = option("", "Final AR checkpoint (e.g. runs/rl/final/ar).")
    sft_av: str = option("", "SFT AV checkpoint, for the AV-SFT round trip (optional).")
    sft_ar: str = option("", "SFT AR checkpoint: AR-SFT on teacher text and the frozen-AR score (optional).")
    data: str = option("", "Held-out activations: teacher eval parquet (adds AR-SFT on teacher text) or extract dir.")
    split: str = option("eval", "Split of --data when it is an `nla extract` directory.")
    train_data: str = option("", "Training activations whose normalised mean gives the baseline B (default: --data).")
    train_split: str = option("ar_sft", "Split of --train-data when it is an `nla extract` directory.")
    rows: int = option(64, "Held-out rows to evaluate.")
    max_new_tokens: int = option(150, "Cap of the greedy explanations.")
    batch_size: int = option(16, "Generation / AR batch size.")
    examples: int = option(4, "Examples written into the card.")
    seed: int = option(0, "Seed of the controls (shuffles, Gaussian vectors, retrieval distractors).")
    out: str = option("", "Write the card as JSON here (optional).")


def evaluation_card(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate every stage that has a checkpoint on the same held-out rows; return the card."""
    from nla.ar import ActivationReconstructor
    from nla.av import ActivationVerbalizer
    from nla.train_ar import Baseline

    if not cfg.data or not (cfg.ar or cfg.sft_ar):
        raise NLAError("nla eval needs --data and at least one AR (--ar or --sft-ar)")
    held = load_vectors(cfg.data, cfg.split)
    vecs = held.vectors[: cfg.rows]
    train = load_vectors(cfg.train_data, cfg.train_split).vectors if cfg.train_data else held.vectors
    baseline = Baseline.from_train(train)
    card: dict[str, Any] = {"data": cfg.data, "rows": int(vecs.shape[0]), "baseline": baseline.value,
                            "baseline_source": f"mean of the normalised vectors of {cfg.train_data or cfg.data}"}
    kw = dict(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=cfg.seed)
    texts: dict[str, list[str]] = {}
    sft_ar = ActivationReconstructor.from_pretrained(cfg.sft_ar) if cfg.sft_ar else None
    if sft_ar is not None and held.explanations is not None:
        from nla.train_ar import evaluate_ar

        card["ar_sft_teacher"] = evaluate_ar(sft_ar, held.explanations[: cfg.rows], vecs, baseline, seed=cfg.seed)
        texts["teacher"] = held.explanations[: cfg.rows]
    if cfg.sft_av and sft_ar is not None:
        m, resp = round_trip(ActivationVerbalizer.from_pretrained(cfg.sft_av), sft_ar, vecs, baseline, **kw)
        card["av_sft_round_trip"], texts["av_sft"] = m, resp.texts
    if cfg.av and cfg.ar:
        av = ActivationVerbalizer.from_pretrained(cfg.av)
        m, resp = round_trip(av, ActivationReconstructor.from_pretrained(cfg.ar), vecs, baseline, **kw)
        card["rl_current_ar"], texts["rl"] = m, resp.texts
        if sft_ar is not None:
            card["rl_frozen_sft_ar"] = round_trip(av, sft_ar, vecs, baseline, responses=resp, seed=cfg.seed)[0]
    stages = [s for s in ("ar_sft_teacher", "av_sft_round_trip", "rl_current_ar") if s in card]
    ref = card[stages[0]] if stages else {}
    card["controls"] = {k: ref[k] for k in ("fve_shuffled", "fve_empty", "fve_random", "fve_mean_predictor") if k in ref}
    card["ladder"] = {s: card[s]["fve_nrm"] for s in stages}
    fves = list(card["ladder"].values())
    card["ladder"]["each_beats_the_one_before"] = all(b > a for a, b in zip(fves, fves[1:], strict=False))
    card["examples"] = [
        {"context_tail": (held.contexts[i][-200:] if held.contexts else None), **{k: v[i] for k, v in texts.items()}}
        for i in range(min(cfg.examples, int(vecs.shape[0])))
    ]
    if cfg.out:
        atomic_write_text(Path(cfg.out), json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    return card


def format_card(card: dict[str, Any]) -> str:
    """A few readable lines: the ladder and the controls."""
    lines = [f"held-out rows: {card['rows']}, baseline B = {card['baseline']:.4f}"]
    for name in ("ar_sft_teacher", "av_sft_round_trip", "rl_current_ar", "rl_frozen_sft_ar"):
        m = card.get(name)
        if m:
            ret = next((f" {k}={v:.3f}" for k, v in m.items() if k.startswith("retrieval_top1")), "")
            tags = f" tag-fail={m['tag_failure_rate']:.2f} len={m['len_mean']:.0f}" if "tag_failure_rate" in m else ""
            lines.append(f"{name:>18}: fve_nrm={m['fve_nrm']:+.3f} shuffled={m['fve_shuffled']:+.3f}{ret}{tags}")
    ctl = card.get("controls", {})
    if ctl:
        lines.append("controls: " + " ".join(f"{k}={v:+.3f}" for k, v in ctl.items()))
    return "\n".join(lines)


__all__ = ["EvalConfig", "Responses", "VectorSet", "evaluation_card", "format_card", "load_vectors",
           "response_stats", "round_trip"]
