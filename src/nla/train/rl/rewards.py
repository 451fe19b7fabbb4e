"""Phase 2 of an RL step: the reward of every rollout, a weighted sum of named terms.

The CURRENT AR reconstructs each valid rollout's explanation (:func:`reconstruct`); every term is then a pure
function of the step's batch (:class:`RewardInputs`) that returns one value per rollout, and the reward is
``sum(weight * term)``, each term logged as ``reward/<name>`` (its weighted mean). The terms that
:func:`reward_terms` builds from :class:`RLConfig`:

============== ======================= ======================================================================
name           weight                  value per rollout
============== ======================= ======================================================================
reconstruction 1                       ``-mse_nrm(AR(explanation), v)`` (in [-4, 0]) when valid, else 0
format         1                       ``-2`` when invalid (no closed tag pair, or truncated), else 0
contrastive    ``contrastive_weight``  ``mse_nrm(pred, v') - mse_nrm(pred, v)`` when valid, ``v'`` another
                                       activation of the step; only when the weight is not 0
length         ``length_coef``         ``-max(0, tokens - length_target)``; only when both are > 0
============== ======================= ======================================================================

reconstruction + format is :func:`nla.core.rl_math.nla_reward`; the math of every term is in
:mod:`nla.core.rl_math`. A custom ``reward_fn(rollouts) -> (M,)`` replaces them all as the one term ``custom``.

>>> x = RewardInputs(gold, pred, valid, lengths, group_size=4)  # doctest: +SKIP
>>> reward, parts = total_reward(reward_terms(cfg), x)          # (M,), {"reconstruction": (M,), ...}
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from nla.core import rl_math
from nla.core.metrics import mse_nrm
from nla.models.ar import ActivationReconstructor
from nla.train.rl.config import RLConfig
from nla.train.rl.rollout import Rollouts


@dataclass(frozen=True)
class RewardInputs:
    """What a reward term sees: the ``M`` rollouts of a step on this rank (row ``i * G + j``: sample j of vector i)."""

    gold: torch.Tensor  # (M, d) the true activation of each row
    pred: torch.Tensor  # (M, d) the current AR's reconstruction from the explanation (zeros where invalid)
    valid: torch.Tensor  # (M,) bool: a complete <explanation> pair and not truncated
    lengths: torch.Tensor  # (M,) response tokens
    group_size: int  # G
    rollouts: Rollouts | None = None  # the raw samples (texts, ids), for terms that read them

    @classmethod
    def of(cls, ro: Rollouts, pred: torch.Tensor, group_size: int) -> RewardInputs:
        return cls(ro.vectors.float(), pred, ro.valid, ro.lengths, group_size, ro)


@dataclass(frozen=True)
class RewardTerm:
    """A named reward term: ``weight * fn(inputs)``, one value per rollout."""

    name: str
    weight: float
    fn: Callable[[RewardInputs], torch.Tensor]  # -> (M,), unweighted

    def __call__(self, x: RewardInputs) -> torch.Tensor:  # -> (M,)
        return self.weight * self.fn(x).float().cpu()


def reconstruction(x: RewardInputs) -> torch.Tensor:  # -> (M,)
    """``-mse_nrm(pred, gold)`` on valid rows (0 = perfect, -2 = orthogonal), 0 on invalid ones."""
    err = mse_nrm(x.pred.detach(), x.gold.detach())
    return torch.where(x.valid, -err, torch.zeros_like(err))


def format_penalty(x: RewardInputs) -> torch.Tensor:  # -> (M,)
    """``-2`` (:data:`nla.core.rl_math.INVALID_REWARD`, the score of an orthogonal guess) on invalid rows."""
    zero = torch.zeros(x.valid.shape, dtype=x.gold.dtype)
    return torch.where(x.valid, zero, torch.full_like(zero, rl_math.INVALID_REWARD))


def contrastive(x: RewardInputs) -> torch.Tensor:  # -> (M,)
    """On valid rows, how much closer the reconstruction is to its own activation than to the next group's
    (rows rolled by ``group_size``): ``mse_nrm(pred, v') - mse_nrm(pred, v)``; 0 with a single group."""
    zero = torch.zeros(x.valid.shape, dtype=x.gold.dtype)
    if x.gold.shape[0] // x.group_size <= 1:
        return zero
    negatives = x.gold.roll(x.group_size, dims=0)  # the vector of another activation
    return torch.where(x.valid, rl_math.contrastive_reward(x.pred, x.gold, negatives, 1.0), zero)


def length(x: RewardInputs, *, target: int) -> torch.Tensor:  # -> (M,)
    """``-max(0, tokens - target)``: the hinged length penalty per token over ``target``."""
    return rl_math.length_penalty(x.lengths, target=target, coef=1.0)


def reward_terms(cfg: RLConfig) -> list[RewardTerm]:
    """The terms the options turn on, in the order they are summed."""
    terms = [RewardTerm("reconstruction", 1.0, reconstruction), RewardTerm("format", 1.0, format_penalty)]
    if cfg.contrastive_weight:
        terms.append(RewardTerm("contrastive", cfg.contrastive_weight, contrastive))
    if cfg.length_coef > 0 and cfg.length_target > 0:
        terms.append(RewardTerm("length", cfg.length_coef, functools.partial(length, target=cfg.length_target)))
    return terms


def custom_term(reward_fn: Callable[[Rollouts], torch.Tensor]) -> RewardTerm:
    """A ``reward_fn(rollouts) -> (M,)`` hook as the single term ``custom``."""
    return RewardTerm("custom", 1.0, lambda x: reward_fn(x.rollouts))


def total_reward(terms: list[RewardTerm], x: RewardInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The reward ``sum(weight * term)`` (M,) and each weighted term by name."""
    if not terms:
        raise ValueError("no reward terms")
    parts = {t.name: t(x) for t in terms}
    if len(parts) != len(terms):
        raise ValueError(f"reward term names must be unique, got {[t.name for t in terms]}")
    values = list(parts.values())
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total, parts


def reconstruct(ar: ActivationReconstructor, ro: Rollouts, amp: AbstractContextManager) -> torch.Tensor:
    """The AR's reconstruction of each valid rollout's explanation; zeros on invalid rows. -> (M, d) float."""
    pred = torch.zeros_like(ro.vectors.float())
    rows = ro.valid.nonzero().squeeze(-1).tolist()
    if rows:
        with amp:
            pred[ro.valid] = ar.predict([ro.responses.explanations[i] or "" for i in rows]).float()
    return pred


__all__ = [
    "RewardInputs",
    "RewardTerm",
    "contrastive",
    "custom_term",
    "format_penalty",
    "length",
    "reconstruct",
    "reconstruction",
    "reward_terms",
    "total_reward",
]
