"""Held-out rows: what carries the round-trip score, the token-lookup control, and claims checked against the model.

On real held-out activations with their context texts (a teacher eval parquet or an extract directory),
the NLA explains each row once; then, with no further generation:

- perturbations (:mod:`nla.faithfulness.perturb`): ``fve_nrm`` of the explanation as written, with quotes
  deleted, quotes only, first line only, sentences shuffled, 30% of words dropped, and each one's change;
  the teacher's explanations (when the file has them) go through the same perturbations as a reference;
- the token-lookup control (:mod:`nla.evaluate.lookup`) beside the NLA's ``fve_nrm`` on the same rows;
- next-token claims against the target's real top 5 (:mod:`nla.faithfulness.claims`), beside a
  permutation floor (row i's claims scored against row j's distribution) and the teacher's own claims;
- quote grounding (:func:`nla.evaluate.roundtrip.grounding`; n/a, not 0, when nothing is quoted);
- every number split by setting (chat / prose / code) and final-token type.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from nla.core.metrics import cosine, mse_nrm
from nla.core.text import quote_grounding, text_for_ar
from nla.data.activations import VectorSet
from nla.evaluate.lookup import last_token_ids, token_lookup_rows
from nla.evaluate.roundtrip import grounding
from nla.faithfulness.breakdown import by_group, mean, setting_of, token_type
from nla.faithfulness.claims import check_claims, next_token_claims, next_token_tops
from nla.faithfulness.perturb import PERTURBATIONS, perturbed
from nla.faithfulness.planting import Explain, Reconstruct
from nla.models.target import Target


def _fve(mse: torch.Tensor, baseline: float | None) -> float | None:
    return None if baseline is None or mse.numel() == 0 else 1.0 - float(mse.mean()) / baseline


def _na(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def perturbation_scores(
    texts: list[str], vectors: torch.Tensor, reconstruct: Reconstruct, baseline: float | None, *, seed: int = 0
) -> tuple[dict[str, dict[str, float | None]], dict[str, torch.Tensor]]:
    """``{perturbation: {"fve", "delta", "cosine"}}`` and each perturbation's per-row ``mse_nrm`` (R,)."""
    scores, per_row = {}, {}
    for name in PERTURBATIONS:
        pred = reconstruct(perturbed(texts, name, seed=seed))  # (R, d)
        per_row[name] = mse_nrm(pred, vectors)
        scores[name] = {"fve": _fve(per_row[name], baseline), "cosine": float(cosine(pred, vectors).mean())}
    written = scores["as written"]["fve"]
    for s in scores.values():
        s["delta"] = None if written is None or s["fve"] is None else s["fve"] - written
    return scores, per_row


def claim_scores(texts: Sequence[str], tops: list[list[tuple[str, float]]], *, seed: int = 0) -> dict[str, Any]:
    """Next-token claim checks over rows, with the permutation floor (claims vs another row's top)."""
    checks = [check_claims(next_token_claims(t), top) for t, top in zip(texts, tops, strict=True)]
    n = len(texts)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist() if n > 1 else list(range(n))
    perm = [p if p != i else (i + 1) % n for i, p in enumerate(perm)]
    floor = [check_claims(next_token_claims(t), tops[p]) for t, p in zip(texts, perm, strict=True)]
    return {
        "with_claims": mean([float(c.n_claims > 0) for c in checks]),
        "in_top5": mean([c.in_top5 for c in checks]),
        "in_top5_floor": mean([c.in_top5 for c in floor]),
        "top1": mean([None if c.top1 is None else float(c.top1) for c in checks]),
        "top1_floor": mean([None if c.top1 is None else float(c.top1) for c in floor]),
        "abs_error_pp": mean([c.abs_error_pp for c in checks]),
        "abs_error_pp_floor": mean([c.abs_error_pp for c in floor]),
        "_rows": [c.in_top5 for c in checks],
    }


def heldout_rows(
    rows: VectorSet,
    target: Target,
    *,
    explain: Explain,
    reconstruct: Reconstruct,
    baseline: float | None,
    train: VectorSet | None = None,
    teacher: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """All held-out-row measurements (see the module docstring) on ``rows`` (vectors + context texts)."""
    assert rows.contexts is not None, "held-out rows need context texts"
    vectors, contexts = rows.vectors.float(), rows.contexts
    tok = target.tokenizer
    ids = [[int(i) for i in tok(c, add_special_tokens=False)["input_ids"]] for c in contexts]
    groups = {
        "setting": [setting_of(c) for c in contexts],
        "token type": [token_type(tok, x) for x in ids],
    }
    texts = [text_for_ar(a) for a in explain(vectors)]
    out: dict[str, Any] = {"rows": len(texts), "baseline": baseline}
    per_row: dict[str, torch.Tensor] = {}
    out["perturbations"] = {}
    out["perturbations"]["nla"], nla_rows = perturbation_scores(texts, vectors, reconstruct, baseline, seed=seed)
    out["fve"] = out["perturbations"]["nla"]["as written"]["fve"]
    per_row.update({f"nla {k}": v for k, v in nla_rows.items()})
    references = {"nla": texts}
    if teacher and rows.explanations is not None and any(rows.explanations):
        ref = [text_for_ar(e) for e in rows.explanations]
        out["perturbations"]["teacher"], _ = perturbation_scores(ref, vectors, reconstruct, baseline, seed=seed)
        references["teacher"] = ref
    if train is not None and train.contexts is not None and baseline is not None:
        lk = token_lookup_rows(
            last_token_ids(tok, train.contexts), train.vectors, [tuple(x[-2:]) for x in ids], vectors
        )
        out["token_lookup"] = {
            "fve_token_lookup": _fve(lk["final"], baseline),
            "fve_token_lookup_2": _fve(lk["last_two"], baseline),
            "token_lookup_seen": lk["final_seen"],
            "token_lookup_2_seen": lk["last_two_seen"],
            "train_rows": int(train.vectors.shape[0]),
        }
        per_row["token lookup"], per_row["token lookup (2)"] = lk["final"], lk["last_two"]
    tops = next_token_tops(target, ids)
    out["next_token"] = {name: claim_scores(ts, tops, seed=seed) for name, ts in references.items()}
    claim_rows = out["next_token"]["nla"].pop("_rows")
    for v in out["next_token"].values():
        v.pop("_rows", None)
    out["quote_grounding"] = {
        name: {k: _na(v) for k, v in grounding(ts, contexts).items()} for name, ts in references.items()
    }
    found = [quote_grounding(t, c) for t, c in zip(texts, contexts, strict=True)]
    out["breakdown"] = {}
    for kind, labels in groups.items():
        part: dict[str, Any] = {}
        for name, mse in per_row.items():
            grouped = by_group(labels, mse.tolist())
            part[name] = {
                g: {"n": x["n"], "fve": _fve(torch.tensor([x["value"]]), baseline)} for g, x in grouped.items()
            }
        part["next-token claims in top 5"] = by_group(labels, claim_rows)
        part["quote grounding"] = {
            g: {
                "n": sum(q for (f, q), lab in zip(found, labels, strict=True) if lab == g),
                "value": _ratio(found, labels, g),
            }
            for g in dict.fromkeys(labels)
        }
        out["breakdown"][kind] = part
    out["examples"] = [
        {
            "context_tail": contexts[i][-160:],
            "nla": texts[i],
            **({"teacher": references["teacher"][i]} if "teacher" in references else {}),
        }
        for i in range(min(4, len(texts)))
    ]
    return out


def _ratio(found: list[tuple[int, int]], labels: list[str], group: str) -> float | None:
    f = sum(a for (a, _), lab in zip(found, labels, strict=True) if lab == group)
    q = sum(b for (_, b), lab in zip(found, labels, strict=True) if lab == group)
    return f / q if q else None


__all__ = ["claim_scores", "heldout_rows", "perturbation_scores"]
