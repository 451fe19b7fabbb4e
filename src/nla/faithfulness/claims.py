"""Next-token claims checked against the target: does the explanation's "Next: ..." match what the model predicts?

A claim is a double-quoted token followed by a percentage (``" of" 94%``, ``"0" <1%``), as the shipped
AV and the offline teacher write them. Tokens are compared in the teachers' display form
(:func:`nla.core.text.readable`: ``<|im_end|>`` -> ``[im_end]``, newlines as ``\\n``, ``"`` as ``'``).
Per explanation: the share of its distinct claimed tokens that are in the target's real top 5, whether
its first claim is the real top 1, and the mean absolute gap, in percentage points, between each stated
percentage and the real probability of that token (``<1%`` counts as 0.5).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nla.core.text import readable
from nla.models.target import Target

_CLAIM = re.compile(r'"([^"\n]*)"\s*(<\s*1|\d{1,3}(?:\.\d+)?)\s*%')
TOP = 5


def next_token_claims(explanation: str | None) -> list[tuple[str, float]]:
    """``[(token as displayed, stated percent), ...]`` in order of appearance."""
    if not explanation:
        return []
    return [
        (m.group(1), 0.5 if m.group(2).startswith("<") else float(m.group(2))) for m in _CLAIM.finditer(explanation)
    ]


@dataclass
class ClaimCheck:
    n_claims: int  # distinct claimed tokens
    in_top5: float | None  # share of them in the real top 5 (None without claims)
    top1: bool | None  # the first claim is the real top-1 token
    abs_error_pp: float | None  # mean |stated % - real %| over the claims


def check_claims(claims: list[tuple[str, float]], top: Sequence[tuple[str, float]]) -> ClaimCheck:
    """Compare claims with the target's distribution ``top``: ``[(display token, probability), ...]``
    sorted by probability (tokens outside ``top`` count as probability 0)."""
    if not claims:
        return ClaimCheck(0, None, None, None)
    real = dict(top)
    top5 = {t for t, _ in top[:TOP]}
    distinct = list(dict.fromkeys(t for t, _ in claims))
    err = [abs(p - 100.0 * real.get(t, 0.0)) for t, p in claims]
    return ClaimCheck(
        n_claims=len(distinct),
        in_top5=sum(t in top5 for t in distinct) / len(distinct),
        top1=bool(top) and claims[0][0] == top[0][0],
        abs_error_pp=sum(err) / len(err),
    )


@torch.no_grad()
def next_token_tops(target: Target, contexts: list[list[int]], *, k: int = 50) -> list[list[tuple[str, float]]]:
    """The target's ``k`` most likely next tokens after each context (token ids), in display form,
    probabilities of tokens with the same display form summed."""
    tok = target.tokenizer
    specials = [str(s) for s in getattr(tok, "all_special_tokens", [])]
    out = []
    for ids in contexts:
        x = torch.tensor([ids], dtype=torch.long, device=target.device)  # (1, T)
        logits = target.model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).logits[0, -1]  # (V,)
        probs = torch.softmax(logits.float(), dim=-1).cpu()
        top = torch.topk(probs, min(k, probs.shape[0]))
        merged: dict[str, float] = {}
        for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            shown = display(tok, i, specials)
            merged[shown] = merged.get(shown, 0.0) + p
        out.append(sorted(merged.items(), key=lambda kv: -kv[1]))
    return out


def display(tokenizer: Any, token_id: int, specials: list[str]) -> str:
    return readable(tokenizer.decode([int(token_id)], clean_up_tokenization_spaces=False), specials).replace('"', "'")


__all__ = ["ClaimCheck", "check_claims", "display", "next_token_claims", "next_token_tops"]
