"""Planted directions (ground truth) and topic recall: does the explanation name what is really there?

Planting: each valid concept direction ``d`` is added to held-out neutral activations ``v`` as
``v + alpha * |v| * unit(d)`` (:func:`nla.faithfulness.directions.plant`) and the NLA explains the result.
Reported per concept and alpha: the hit rate (the explanation names the planted concept, by keyword), the
false-positive rate at alpha = 0 (a concept is named with nothing planted), the cross-talk matrix (planting
A makes it name B), which part of the explanation carries each hit, and two keyword-free scores from the
AR: its view (cosine of the reconstruction with ``unit(d)``, beside the planted vector's own cosine) and
whether the reconstruction moves toward ``d`` more than the unplanted base's does (beside the same
movement toward the other concepts' directions, the floor). The raw directions are explained too.

Topic recall: held-out on-topic texts explained at their last token; the share that name the right
concept beside a permutation floor (the same explanations scored against the other concepts' keywords).

Everything here takes ``explain`` (N vectors -> N raw answers) and ``reconstruct`` (N AR-ready texts ->
(N, d)) callables, so the suite can be tested with verbalizers whose truth is known.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch

from nla.core.metrics import cosine
from nla.core.text import text_for_ar
from nla.faithfulness.breakdown import by_group, mean
from nla.faithfulness.concepts import ConceptSet, match_sites
from nla.faithfulness.directions import Direction, plant

Explain = Callable[[torch.Tensor], list[str]]
Reconstruct = Callable[[list[str]], torch.Tensor]


def _cos_to(recon: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:  # (N, d), (d,) -> (N,)
    return cosine(recon, direction.expand_as(recon))


def planting(
    concepts: ConceptSet,
    directions: Sequence[Direction],
    bases: torch.Tensor,  # (B, d) held-out neutral activations
    groups: dict[str, list[str]],  # per base: {"setting": [...], "token type": [...]}
    *,
    alphas: Sequence[float],
    planted_bases: int,
    explain: Explain,
    reconstruct: Reconstruct | None,
) -> dict[str, Any]:
    """Explain the unplanted bases (all ``B``) and each valid direction planted into the first
    ``planted_bases`` bases at every non-zero alpha; score hits, false positives, cross-talk, the AR's view."""
    valid = [d for d in directions if d.valid]
    by_name = {c.name: c for c in concepts.concepts}
    n = min(planted_bases, bases.shape[0])
    nonzero = [float(a) for a in alphas if float(a) != 0.0]
    planted = [(d, a) for d in valid for a in nonzero]
    batch = torch.cat([bases, *[plant(bases[:n], d.vector, a) for d, a in planted]]) if planted else bases
    raw_dirs = torch.stack([d.vector for d in valid]) if valid else torch.zeros(0, bases.shape[1])
    answers = explain(torch.cat([batch, raw_dirs]))
    texts = [text_for_ar(a) for a in answers]
    recon = reconstruct(texts) if reconstruct is not None else None  # (M, d)
    base_texts = texts[: bases.shape[0]]

    def rows(i: int) -> slice:  # rows of (valid direction, nonzero alpha) number i in ``texts``
        start = bases.shape[0] + i * n
        return slice(start, start + n)

    # false positives: every concept of the set, on all unplanted bases
    named0 = [concepts.named(t) for t in base_texts]
    fpr = {c.name: mean([float(c.name in nm) for nm in named0]) for c in concepts.concepts}
    out: dict[str, Any] = {
        "alphas": [float(a) for a in alphas],
        "bases": int(bases.shape[0]),
        "planted_bases": n,
        "false_positive_rate": fpr,
        "false_positive_any": mean([float(bool(nm)) for nm in named0]),
        "base_explanations": base_texts,
        "base_named": named0,  # per unplanted base: the concepts its explanation names
    }
    hit: dict[str, dict[str, float | None]] = {}
    cross: dict[str, dict[str, dict[str, float | None]]] = {}
    sites: Counter[str] = Counter()
    quoted: Counter[str] = Counter()
    view: dict[str, dict[str, Any]] = {}
    examples: dict[str, dict[str, str]] = {}
    named_at: dict[str, dict[str, list[list[str]]]] = {}  # concept -> alpha -> per planted base: concepts named
    for k, d in enumerate(valid):
        c = by_name[d.concept]
        hit[c.name] = {"0": fpr[c.name]}
        view[c.name] = {}
        for j, a in enumerate(nonzero):
            r = rows(k * len(nonzero) + j)
            ts = texts[r]
            hit[c.name][_key(a)] = mean([float(c.named_in(t)) for t in ts])
            named = [concepts.named(t) for t in ts]
            named_at.setdefault(c.name, {})[_key(a)] = named
            cross.setdefault(_key(a), {})[c.name] = {
                **{o: mean([float(o in nm) for nm in named]) for o in concepts.names},
                "none": mean([float(not nm) for nm in named]),
            }
            for t in ts:
                for label, in_quote in {*match_sites(t, c)}:
                    sites[label] += 1
                    quoted["in a quote" if in_quote else "outside quotes"] += 1
            examples.setdefault(c.name, {})[_key(a)] = ts[0]
            if recon is not None:
                view[c.name][_key(a)] = _ar_view(recon, batch, r, d, valid, n)
        if recon is not None:
            view[c.name]["0"] = {"ar_cosine": float(_cos_to(recon[:n], d.unit).mean())}
    out["hit_rate"] = hit
    out["hit_rate_mean"] = {
        _key(a): mean([hit[d.concept].get(_key(a)) for d in valid]) for a in [0.0, *nonzero] if valid
    }
    out["cross_talk"] = cross
    out["named"] = named_at
    out["hit_sites"] = {"part": dict(sites.most_common()), "quoted": dict(quoted)}
    out["examples"] = examples
    if recon is not None:
        out["ar_view"] = view
        out["keyword_free"] = {
            _key(a): {
                "moved_toward": mean([view[d.concept][_key(a)]["moved_toward"] for d in valid]),
                "moved_toward_floor": mean([view[d.concept][_key(a)]["moved_toward_floor"] for d in valid]),
                "delta_cosine": mean([view[d.concept][_key(a)]["delta_cosine"] for d in valid]),
                "delta_cosine_floor": mean([view[d.concept][_key(a)]["delta_cosine_floor"] for d in valid]),
            }
            for a in nonzero
            if valid
        }
    raw_texts = texts[batch.shape[0] :]
    out["raw_directions"] = [
        {
            "concept": d.concept,
            "explanation": t,
            "names_it": by_name[d.concept].named_in(t),
            "named": concepts.named(t),
            **(
                {"ar_cosine": float(_cos_to(recon[batch.shape[0] + i : batch.shape[0] + i + 1], d.unit)[0])}
                if recon is not None
                else {}
            ),
        }
        for i, (d, t) in enumerate(zip(valid, raw_texts, strict=True))
    ]
    out["breakdown"] = _breakdown(concepts, valid, nonzero, texts, groups, n, rows, base_texts)
    return out


def _key(alpha: float) -> str:
    return f"{alpha:g}"


def _ar_view(
    recon: torch.Tensor,  # (M, d)
    batch: torch.Tensor,  # (M', d) the explained vectors (bases first)
    r: slice,
    d: Direction,
    valid: Sequence[Direction],
    n: int,
) -> dict[str, float]:
    """Cosine of the reconstructions with ``unit(d)``, its change from the unplanted base's, and the same
    change toward the other valid directions (the floor)."""
    planted, base = recon[r], recon[:n]  # (n, d), (n, d)
    delta = _cos_to(planted, d.unit) - _cos_to(base, d.unit)  # (n,)
    others = [o for o in valid if o.concept != d.concept]
    floor = [(_cos_to(planted, o.unit) - _cos_to(base, o.unit)) for o in others]  # each (n,)
    return {
        "ar_cosine": float(_cos_to(planted, d.unit).mean()),
        "planted_cosine": float(_cos_to(batch[r], d.unit).mean()),  # what a perfect reconstruction would show
        "delta_cosine": float(delta.mean()),
        "moved_toward": float((delta > 0).float().mean()),
        "delta_cosine_floor": float(torch.stack(floor).mean()) if floor else None,
        "moved_toward_floor": float((torch.stack(floor) > 0).float().mean()) if floor else None,
    }


def _breakdown(
    concepts: ConceptSet,
    valid: Sequence[Direction],
    nonzero: list[float],
    texts: list[str],
    groups: dict[str, list[str]],
    n: int,
    rows: Callable[[int], slice],
    base_texts: list[str],
) -> dict[str, Any]:
    """Hit rate at alpha 1 and 2 and the any-concept false-positive rate, split by each base's groups."""
    by_name = {c.name: c for c in concepts.concepts}
    out: dict[str, Any] = {}
    for kind, labels in groups.items():
        part: dict[str, Any] = {
            "false_positive_any": by_group(labels, [float(bool(concepts.named(t))) for t in base_texts])
        }
        for a in (1.0, 2.0):
            if a not in nonzero:
                continue
            j = nonzero.index(a)
            g, v = [], []
            for k, d in enumerate(valid):
                ts = texts[rows(k * len(nonzero) + j)]
                g += labels[:n]
                v += [float(by_name[d.concept].named_in(t)) for t in ts]
            part[f"hit_rate@{_key(a)}"] = by_group(g, v)
        out[kind] = part
    return out


def topic_recall(
    concepts: ConceptSet,
    vectors: torch.Tensor,  # (N, d) last-token activations of held-out on-topic texts
    labels: list[str],  # the concept of each text
    groups: dict[str, list[str]],
    *,
    explain: Explain,
) -> dict[str, Any]:
    """Share of explanations naming their text's concept, beside the permutation floor."""
    texts = [text_for_ar(a) for a in explain(vectors)]
    names = concepts.names
    right = [float(concepts.concepts[names.index(lab)].named_in(t)) for t, lab in zip(texts, labels, strict=True)]
    floor = [
        mean([float(c.named_in(t)) for c in concepts.concepts if c.name != lab])
        for t, lab in zip(texts, labels, strict=True)
    ]
    per = {
        c.name: {
            "recall": mean([r for r, lab in zip(right, labels, strict=True) if lab == c.name]),
            "floor": mean([f for f, lab in zip(floor, labels, strict=True) if lab == c.name]),
            "example": next((t for t, lab in zip(texts, labels, strict=True) if lab == c.name), None),
        }
        for c in concepts.concepts
        if c.name in labels
    }
    return {
        "n": len(texts),
        "recall": mean(right),
        "floor": mean(floor),
        "per_concept": per,
        "breakdown": {kind: {"recall": by_group(g, right), "floor": by_group(g, floor)} for kind, g in groups.items()},
        "explanations": [
            {"concept": lab, "explanation": t, "named": concepts.named(t)} for lab, t in zip(labels, texts, strict=True)
        ],
    }


__all__ = ["Explain", "Reconstruct", "planting", "topic_recall"]
