"""Best-of-K decoding: the AV's greedy answer plus K-1 samples; the AR keeps the one it reconstructs best.

Before the AR chooses, every answer keeps only the content claims (``Topic:`` label, salient ``words:``)
that at least ``min_support`` of the K answers make (:func:`nla.core.text.keep_supported`): samples at
T 0.7 invent topics and words that the greedy answer and the other samples do not repeat, and the AR, which
reads those lines little, would not choose against them. On 128 held-out rows of the round-7 NLA it halved
the wrong topic claims at almost no cost in fve or in right ones (docs/faithfulness.md, "Best-of-K").

The choice uses the true vector, exactly as the RL reward does, so it is available wherever an
explanation is written for a known activation (``nla explain``, ``nla eval``), never from text alone.
It costs K generations per vector. Because the AR that chooses may also be the AR that scores,
``nla eval --best-of`` reports the chosen texts read by a second AR as well (the SFT AR): a gain that
survives there is information in the text, not a quirk of one reader.

>>> chosen, mse = best_of(av, ar, vectors, k=4)                       # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch

from nla.common.errors import NLAError
from nla.core.metrics import mse_nrm
from nla.core.text import DEFAULT_MIN_SUPPORT, keep_supported, text_for_ar
from nla.generation import GREEDY, Slot
from nla.models.ar import ActivationReconstructor
from nla.models.av import ActivationVerbalizer
from nla.models.sequences import Responses

DEFAULT_TEMPERATURE = 0.7  # measured on the shipped NLA: docs/results.md §11
DEFAULT_BEST_OF = 4  # what `nla explain` and NLA.explain use when an AR is loaded (the card's headline)


def candidates(
    av: ActivationVerbalizer,
    vectors: torch.Tensor,  # (N, d)
    k: int,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    max_new_tokens: int = 150,
    batch_size: int = 16,
    seed: int | None = 0,
    min_support: int = DEFAULT_MIN_SUPPORT,
) -> Responses:
    """``k`` answers per vector, flat (row ``i * k + j``): j = 0 is the greedy answer, the rest samples;
    with ``min_support`` > 1 each keeps only the content claims that many of its group make (its token ids
    are those of the edited text). ``batch_size`` counts vectors: a batch decodes all k answers of
    ``batch_size`` vectors, which share one prefill per vector (:mod:`nla.generation.hf`)."""
    if k < 1:
        raise NLAError(f"best-of needs k >= 1, got {k}")
    slots = [GREEDY, *[Slot(temperature=temperature)] * (k - 1)]
    flat = av.sample_slots(vectors, slots, max_new_tokens=max_new_tokens, batch_size=batch_size * k, seed=seed)
    return supported(av, flat, k, min_support)


def supported(av: ActivationVerbalizer, cands: Responses, k: int, min_support: int) -> Responses:
    """``cands`` (groups of ``k``) with only the claims ``min_support`` answers of a group make; an edited
    answer is tokenised again and keeps its end-of-turn token."""
    if min_support <= 1:
        return cands
    texts = [t for g in range(0, len(cands.texts), k) for t in keep_supported(cands.texts[g : g + k], min_support)]
    ids = [
        old if new == was else av.tokenizer.encode(new, add_special_tokens=False) + ([] if cut else old[-1:])
        for old, was, new, cut in zip(cands.ids, cands.texts, texts, cands.truncated, strict=True)
    ]
    return Responses(ids, texts, list(cands.truncated))


def choose(
    ar: ActivationReconstructor, vectors: torch.Tensor, cands: Responses, k: int, *, batch_size: int = 32
) -> tuple[Responses, torch.Tensor]:
    """The candidate with the lowest ``mse_nrm`` per vector (ties: the earliest, so greedy) and all the
    candidates' ``mse_nrm`` (N, k)."""
    n = vectors.shape[0]
    if len(cands.texts) != n * k:
        raise NLAError(f"{len(cands.texts)} candidates for {n} vectors x {k}")
    pred = ar.predict([text_for_ar(t) for t in cands.texts], batch_size=batch_size).float().cpu()  # (N*k, d)
    gold = vectors.float().cpu().repeat_interleave(k, dim=0)  # (N*k, d)
    mse = mse_nrm(pred, gold).view(n, k)  # (N, k)
    return cands.take([i * k + j for i, j in enumerate(mse.argmin(dim=1).tolist())]), mse


def resolve_best_of(best_of: int | None, *, has_ar: bool, sampling: bool) -> int:
    """The K to decode with: ``best_of`` when given, else :data:`DEFAULT_BEST_OF` with an AR to choose
    and no sampling asked for, else 1 (greedy)."""
    if best_of is not None:
        return best_of
    return DEFAULT_BEST_OF if has_ar and not sampling else 1


def best_of(
    av: ActivationVerbalizer, ar: ActivationReconstructor, vectors: torch.Tensor, k: int, **kwargs: Any
) -> tuple[Responses, torch.Tensor]:
    """:func:`candidates` then :func:`choose`: the chosen responses (N) and every candidate's ``mse_nrm`` (N, k)."""
    return choose(ar, vectors, candidates(av, vectors, k, **kwargs), k)


__all__ = [
    "DEFAULT_BEST_OF",
    "DEFAULT_MIN_SUPPORT",
    "DEFAULT_TEMPERATURE",
    "best_of",
    "candidates",
    "choose",
    "resolve_best_of",
    "supported",
]
