"""Round trip: the AV explains held-out vectors, the AR rebuilds them, and every score sits beside controls.

:func:`evaluate_ar` scores an AR on given explanations (``fve_nrm`` beside shuffled vectors, the empty
explanation, random Gaussian vectors and the mean predictor; retrieval top-1 among 8);
:func:`round_trip` has the AV write the explanations first (greedy, or best of K via
:mod:`nla.evaluate.rerank`). :class:`Baseline` is B, the predict-the-mean MSE of a TRAINING split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nla.common.errors import NLAError
from nla.core import metrics
from nla.core.text import cjk_fraction, quote_grounding, text_for_ar
from nla.evaluate.rerank import DEFAULT_MIN_SUPPORT, DEFAULT_TEMPERATURE
from nla.evaluate.rerank import best_of as best_of_k
from nla.models.ar import ActivationReconstructor
from nla.models.av import ActivationVerbalizer
from nla.models.sequences import Responses


@dataclass
class Baseline:
    """The predict-the-mean baseline of a TRAINING split: ``value`` = B, ``mean`` = normalised mean (d,)."""

    value: float
    mean: torch.Tensor  # (d,)

    @classmethod
    def from_train(cls, vectors: torch.Tensor) -> Baseline:  # (N, d)
        return cls(value=metrics.mean_baseline(vectors), mean=metrics.mean_direction(vectors))


@torch.no_grad()
def evaluate_ar(
    ar: ActivationReconstructor,
    explanations: list[str],
    vectors: torch.Tensor,  # (N, d) raw gold vectors
    baseline: Baseline | float,
    *,
    batch_size: int = 32,
    k: int = 8,
    seed: int = 0,
) -> dict[str, float]:
    """Held-out metrics with controls. ``baseline`` is B of the TRAINING split (a :class:`Baseline`
    also yields the predict-the-mean control; a bare float omits it)."""
    if len(explanations) != vectors.shape[0] or not explanations:
        raise NLAError(
            f"evaluate_ar needs as many explanations as vectors (got {len(explanations)} and {vectors.shape[0]})"
        )
    B = baseline.value if isinstance(baseline, Baseline) else float(baseline)
    gold = vectors.float()
    gen = torch.Generator().manual_seed(seed)
    pred = ar.predict(explanations, batch_size=batch_size)  # (N, d)
    mse = metrics.mse_nrm(pred, gold)  # (N,)
    empty = ar.predict([""])  # (1, d): the same for every row
    noise = torch.randn(gold.shape, generator=gen)  # (N, d)
    out = {
        "n": float(len(explanations)),
        "baseline": B,
        "mse_nrm": float(mse.mean()),
        "fve_nrm": metrics.fve_nrm(mse, B),
        "cosine": float(metrics.cosine(pred, gold).mean()),
        "fve_shuffled": metrics.fve_nrm(metrics.mse_nrm(pred, metrics.shuffled(gold, generator=gen)), B),
        "fve_empty": metrics.fve_nrm(metrics.mse_nrm(empty.expand_as(gold), gold), B),
        "cosine_empty": float(metrics.cosine(empty.expand_as(gold), gold).mean()),
        "fve_random": metrics.fve_nrm(metrics.mse_nrm(noise, gold), B),
    }
    if isinstance(baseline, Baseline):
        out["fve_mean_predictor"] = metrics.fve_nrm(metrics.mse_nrm(baseline.mean.expand_as(gold), gold), B)
    kk = min(k, len(explanations))
    if kk >= 2:
        out[f"retrieval_top1_at_{kk}"] = metrics.retrieval_top1(pred, gold, kk, generator=gen)
    return out


def format_eval(m: dict[str, float]) -> str:
    """One readable line: the FVE beside its controls."""
    ret = next((f"{k}={v:.3f}" for k, v in m.items() if k.startswith("retrieval_top1")), "")
    mean = f" mean-predictor={m['fve_mean_predictor']:+.3f}" if "fve_mean_predictor" in m else ""
    return (
        f"fve_nrm={m['fve_nrm']:+.3f} (controls:{mean} shuffled={m['fve_shuffled']:+.3f} "
        f"empty={m['fve_empty']:+.3f} random={m['fve_random']:+.3f}) cosine={m['cosine']:.3f} "
        f"cosine_empty={m['cosine_empty']:.3f} {ret} B={m['baseline']:.4f} n={int(m['n'])}"
    )


def grounding(explanations: list[str], contexts: list[str] | None) -> dict[str, float]:
    """Share of quoted spans found verbatim in their contexts (:func:`nla.core.text.quote_grounding`)."""
    if contexts is None:
        return {}
    pairs = [quote_grounding(text_for_ar(e), c) for e, c in zip(explanations, contexts, strict=False)]
    quoted = sum(q for _, q in pairs)
    return {
        "quote_grounding": sum(f for f, _ in pairs) / quoted if quoted else float("nan"),
        "quotes_per_explanation": quoted / max(1, len(pairs)),
    }


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
    av: ActivationVerbalizer,
    ar: ActivationReconstructor,
    vectors: torch.Tensor,  # (N, d) held-out raw vectors
    baseline: Baseline | float,
    *,
    responses: Responses | None = None,
    max_new_tokens: int = 150,
    batch_size: int = 16,
    k: int = 8,
    seed: int = 0,
    contexts: list[str] | None = None,
    best_of: int = 1,
    temperature: float = DEFAULT_TEMPERATURE,
    min_support: int = DEFAULT_MIN_SUPPORT,
) -> tuple[dict[str, float], Responses]:
    """Greedy AV explanations (or the given ``responses``; or with ``best_of`` K > 1 the best of the
    greedy answer and K-1 samples at ``temperature``, with the claims ``min_support`` of them make, chosen
    by ``ar``: :mod:`nla.evaluate.rerank`) scored by
    ``ar`` with all controls; with the held-out ``contexts``, also how many of their quotes occur in them."""
    if responses is None and best_of > 1:
        responses = best_of_k(
            av,
            ar,
            vectors,
            best_of,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            seed=seed,
            min_support=min_support,
        )[0]
    elif responses is None:
        responses = av.sample(vectors, max_new_tokens=max_new_tokens, batch_size=batch_size)
    metrics = evaluate_ar(ar, [text_for_ar(t) for t in responses.texts], vectors, baseline, k=k, seed=seed)
    metrics.update(response_stats(responses))
    metrics.update(grounding(responses.texts, contexts))
    if best_of > 1:
        metrics.update(best_of=float(best_of), temperature=temperature, min_support=float(min_support))
    return metrics, responses
