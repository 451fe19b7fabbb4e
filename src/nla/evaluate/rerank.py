"""Best-of-K decoding: the AV's greedy answer plus K-1 samples; the AR keeps the one it reconstructs best.

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
from nla.core.text import text_for_ar
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
) -> Responses:
    """``k`` answers per vector, flat (row ``i * k + j``): j = 0 is the greedy answer, the rest samples."""
    if k < 1:
        raise NLAError(f"best-of needs k >= 1, got {k}")
    greedy = av.sample(vectors, max_new_tokens=max_new_tokens, batch_size=batch_size)
    if k == 1:
        return greedy
    drawn = av.sample(
        vectors,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        do_sample=True,
        temperature=temperature,
        num_samples=k - 1,
        seed=seed,
    )
    n = vectors.shape[0]  # in greedy + drawn, vector i's greedy answer is row i, its samples n + i*(k-1) ...
    both = greedy + drawn
    return both.take([r for i in range(n) for r in (i, *range(n + i * (k - 1), n + (i + 1) * (k - 1)))])


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


__all__ = ["DEFAULT_BEST_OF", "DEFAULT_TEMPERATURE", "best_of", "candidates", "choose", "resolve_best_of"]
