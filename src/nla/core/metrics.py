"""Pure metric functions on activation vectors (no I/O).

Conventions (official NLA):
- ``normalize_to(v, s)`` rescales each row to norm ``s``; the metrics use ``s = sqrt(d)``.
- ``mse_nrm(pred, gold) = mean_i (pred_i/|pred_i| - gold_i/|gold_i|)^2 * d = 2 (1 - cos)``, per row.
- ``fve_nrm = 1 - mse_nrm / B`` where ``B`` is the **predict-the-mean baseline on the training split**:
  the MSE (in the same normalised units) of predicting, for every vector, the mean of the
  *normalised training vectors* (:func:`mean_baseline`). This is the "mean-of-normalised" baseline;
  the raw-variance variant is not used. A held-out set scored against its own train-split baseline
  can therefore be slightly below 0 even for the mean predictor.
"""

from __future__ import annotations

import math

import torch

EPS = 1e-6


def normalize_to(v: torch.Tensor, scale: float) -> torch.Tensor:  # (..., d) -> (..., d)
    """Rescale each vector to norm ``scale`` (eps inside the norm keeps zero rows finite)."""
    v = v.float()
    return v * (scale / torch.sqrt((v * v).sum(-1, keepdim=True) + EPS))


def unit(v: torch.Tensor) -> torch.Tensor:  # (..., d)
    return normalize_to(v, 1.0)


def mse_nrm(pred: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:  # (..., d), (..., d) -> (...)
    """Per-row MSE after scaling both to norm sqrt(d): equals 2(1 - cos)."""
    d = pred.shape[-1]
    diff = normalize_to(pred, math.sqrt(d)) - normalize_to(gold, math.sqrt(d))
    return (diff * diff).mean(-1)


def cosine(pred: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:  # (..., d), (..., d) -> (...)
    return (unit(pred) * unit(gold)).sum(-1)


def mean_direction(train: torch.Tensor) -> torch.Tensor:  # (N, d) -> (d,)
    """Mean of the unit-normalised training vectors: the predict-the-mean predictor."""
    return unit(train).mean(0)


def mean_baseline(train: torch.Tensor, against: torch.Tensor | None = None) -> float:  # (N, d), (M, d)
    """Predict-the-mean baseline B: mean ``mse_nrm`` of the normalised-train-mean vs ``against``
    (defaults to the training vectors themselves)."""
    gold = train if against is None else against
    mu = mean_direction(train).expand_as(gold)
    return float(mse_nrm(mu, gold).mean())


def fve_nrm(mse: torch.Tensor | float, baseline: float) -> float:
    """Fraction of variance explained: ``1 - mean(mse) / baseline``."""
    m = float(mse.float().mean()) if isinstance(mse, torch.Tensor) else float(mse)
    return 1.0 - m / baseline


def retrieval_top1(
    pred: torch.Tensor, gold: torch.Tensor, k: int, *, generator: torch.Generator | None = None
) -> float:
    """Share of rows whose true vector is the nearest (by mse_nrm) among itself and ``k - 1`` distractors.

    pred, gold: (N, d), row i of ``pred`` reconstructs row i of ``gold``. Distractors are other rows of
    ``gold`` drawn uniformly without replacement. Ties count as failures. Chance is ``1/k``.
    """
    n = gold.shape[0]
    if not 2 <= k <= n:
        raise ValueError(f"k must be in [2, {n}], got {k}")
    hits = 0
    for i in range(n):
        others = torch.randperm(n - 1, generator=generator)[: k - 1]
        others = others + (others >= i).long()  # skip row i
        cands = torch.cat([gold[i : i + 1], gold[others]])  # (k, d)
        errs = mse_nrm(pred[i : i + 1].expand_as(cands), cands)  # (k,)
        hits += int(bool((errs[0] < errs[1:]).all()))
    return hits / n


def shuffled(gold: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:  # (N, d)
    """A derangement-free-ish control: rows permuted so (almost) no row keeps its place."""
    n = gold.shape[0]
    if n < 2:
        return gold.clone()
    perm = torch.randperm(n, generator=generator)
    fixed = perm == torch.arange(n)
    perm[fixed] = (perm[fixed] + 1) % n  # move fixed points
    return gold[perm]


def between_group_share(x: torch.Tensor, groups: torch.Tensor) -> float:  # (N, d), (N,) group id per row
    """Share of the variance of ``x`` (trace over coordinates) that lies between groups: the one-way ANOVA
    estimate ``s_b / (s_b + s_w)`` of the between-group component, unbiased for few rows per group (the naive
    share of the group means' variance counts the within-group noise of each mean as between-group). Clipped at 0."""
    ids, inv, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    n, g = x.shape[0], ids.numel()
    if g < 2 or n <= g:
        raise ValueError(f"need at least 2 groups and more rows than groups, got {n} rows in {g} groups")
    x = x.double()
    means = torch.zeros(g, x.shape[1], dtype=x.dtype).index_add_(0, inv, x) / counts[:, None]  # (G, d)
    within = float((x - means[inv]).pow(2).sum()) / (n - g)
    between = float((counts[:, None] * (means - x.mean(0)).pow(2)).sum()) / (g - 1)
    n0 = (n - float(counts.double().pow(2).sum()) / n) / (g - 1)
    component = max(0.0, (between - within) / n0)
    return component / (component + within)
