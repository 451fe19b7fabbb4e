"""Phase 1 of an RL step: which activations a step uses, and ``group_size`` explanations sampled per activation.

The activations of step ``s`` are ``prompts_per_step`` rows of a seeded permutation per pass over the data
(:func:`step_rows`), split evenly over the ranks. Sampling (:func:`sample_rollouts`) injects each vector into
the AV's prompt and samples at ``temperature`` with no top-k/top-p, so that the raw-logit log-probs of the
update are the sampling distribution; it is seeded by (seed, step, rank) (:func:`sampling_seed`) without
touching the global RNG. A response that does not end its turn within ``max_new_tokens`` is *truncated*; one
without a complete ``<explanation>`` pair, or truncated, is *invalid* (:func:`nla.core.rl_math.response_valid`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from nla.core import rl_math
from nla.models.av import ActivationVerbalizer
from nla.models.sequences import Responses
from nla.train.rl.config import RLConfig


@dataclass
class Rollouts:
    """The sampled responses of one step on this rank: row ``i * G + j`` is sample j of vector i."""

    vectors: torch.Tensor  # (M, d) raw activation of each row
    responses: Responses
    valid: torch.Tensor  # (M,) bool

    @property
    def lengths(self) -> torch.Tensor:  # (M,)
        """Response tokens per row (end-of-turn included when produced; no padding)."""
        return torch.tensor([len(r) for r in self.responses.ids], dtype=torch.long)


def step_rows(n: int, prompts_per_step: int, step: int, seed: int) -> list[int]:
    """Rows (of ``n`` training vectors) used by ``step`` (0-based), all ranks together: the ``k``-th
    prompt of the run is row ``perm_e[k mod n]`` of a permutation seeded per pass ``e = k // n``."""
    rows = []
    for k in range(step * prompts_per_step, (step + 1) * prompts_per_step):
        epoch, i = divmod(k, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        rows.append(int(perm[i]))
    return rows


def sampling_seed(seed: int, step: int, rank: int) -> int:
    """The sampling seed of ``step`` on ``rank``: different on every rank and step, the same on a resume."""
    return seed * 1_000_003 + step * 1_009 + rank


def sample_rollouts(
    av: ActivationVerbalizer,
    vectors: torch.Tensor,  # (N, d)
    cfg: RLConfig,
    seed: int,
    amp: AbstractContextManager,
) -> Rollouts:  # N * group_size rows
    """``cfg.group_size`` sampled responses per vector (under the autocast context ``amp``), flagged valid or not.
    A backend that serves a copy of the weights (vLLM) gets the AV's current ones first."""
    sync = getattr(getattr(av, "backend", None), "sync", None)
    if sync is not None:
        sync(av)
    with amp:
        resp = av.sample(
            vectors,
            num_samples=cfg.group_size,
            max_new_tokens=cfg.max_new_tokens,
            do_sample=True,
            temperature=cfg.temperature,
            batch_size=cfg.gen_batch_size,
            seed=seed,
        )
    valid = rl_math.response_valid(resp.texts, resp.truncated)
    return Rollouts(vectors.repeat_interleave(cfg.group_size, dim=0).cpu(), resp, valid)


__all__ = ["Rollouts", "sample_rollouts", "sampling_seed", "step_rows"]
