"""Pure tensor math for joint GRPO training of the AV against the AR (no I/O, no models).

One RL step, in these terms (the loop itself lives elsewhere):

1. sample ``G`` responses per activation; :func:`response_valid` flags the usable ones;
2. rewards = :func:`nla_reward` (+ optional :func:`contrastive_reward`, :func:`length_penalty` on
   :func:`response_lengths`), then :func:`grpo_advantages` per group;
3. policy loss = :func:`clipped_pg_loss` + ``kl_coef *`` :func:`masked_mean` of :func:`k3_kl_tokens`
   against the frozen SFT AV, with the same aggregation for both terms.

Log-probabilities here are always per response token, shape ``(B, R)``, with a ``mask`` that is True on
real response tokens and False on padding / prompt. Compute them with :func:`token_logprobs` from RAW
logits at the sampling temperature, never from top-k/top-p filtered ones.

Example::

    adv = grpo_advantages(rewards, group_size=4).flatten()        # (B,)
    loss, stats = clipped_pg_loss(logp, old_logp, adv, mask)      # scalar, {"clip_frac", "ratio_mean"}
    loss = loss + 0.01 * masked_mean(k3_kl_tokens(logp, ref_logp), mask)
"""

from __future__ import annotations

from typing import Literal

import torch

from nla.core.metrics import mse_nrm
from nla.core.text import extract_explanation

Aggregation = Literal["token", "sequence"]
INVALID_REWARD = -2.0  # mse_nrm of an orthogonal prediction: 2 (1 - cos 90°)
_MAX_LOG_RATIO = 20.0  # k3 clamps |ref - logp| here so exp() cannot overflow


def grpo_advantages(
    rewards: torch.Tensor, group_size: int, *, normalize_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:  # (N*G,) or (N, G) -> (N, G)
    """Group-relative advantages: ``A_ij = (r_ij - mean_j r_ij) / (std_j r_ij + eps)``.

    Rows are groups (the ``G`` samples of one activation); a flat input is read group by group, i.e.
    ``rewards.view(N, G)``. The std is the population std (``unbiased=False``, divides by ``G``), so
    ``G = 1`` is well defined. With ``normalize_std=False`` the advantage is just ``r - mean`` (Dr. GRPO
    style). A group whose rewards are all equal gets exactly zero advantages (no float residue).
    """
    r = rewards.detach().float()
    if r.dim() == 1:
        if group_size < 1 or r.numel() % group_size:
            raise ValueError(f"{r.numel()} rewards cannot be split into groups of {group_size}")
        r = r.view(-1, group_size)
    elif r.dim() != 2 or r.shape[1] != group_size:
        raise ValueError(f"rewards must be (N*G,) or (N, G={group_size}), got {tuple(rewards.shape)}")
    adv = r - r.mean(dim=1, keepdim=True)  # (N, G)
    if normalize_std:
        adv = adv / (r.std(dim=1, unbiased=False, keepdim=True) + eps)
    constant = r.amax(dim=1, keepdim=True) == r.amin(dim=1, keepdim=True)  # (N, 1)
    return torch.where(constant, torch.zeros_like(adv), adv)


def masked_mean(
    values: torch.Tensor,
    mask: torch.Tensor,
    aggregation: Aggregation = "token",
    *,
    denom: float | None = None,
) -> torch.Tensor:  # (B, R), (B, R) -> ()
    """Reduce per-token values to a scalar over the tokens where ``mask`` is True.

    - ``"token"``: ``sum(v * m) / sum(m)``, one mean over every valid token of the batch; each token
      weighs the same, so long responses weigh more in total (DAPO-style; the default).
    - ``"sequence"``: mean over each sequence's valid tokens, then mean over sequences (original GRPO);
      each response weighs the same, whatever its length. Sequences without valid tokens count as 0.

    Masked positions contribute neither value nor gradient, even if they hold inf/NaN. ``denom``
    overrides the divisor (valid tokens for "token", sequences for "sequence") with the count of the
    WHOLE batch, so that losses of micro-batches summed under gradient accumulation equal the full-batch
    loss.
    """
    m = mask.bool()
    v = torch.where(m, values, torch.zeros_like(values))
    if aggregation == "token":
        return v.sum() / (m.sum().clamp(min=1) if denom is None else denom)
    if aggregation == "sequence":
        per_seq = v.sum(-1) / m.sum(-1).clamp(min=1)  # (B,)
        return per_seq.sum() / (per_seq.numel() if denom is None else denom)
    raise ValueError(f"aggregation must be 'token' or 'sequence', got {aggregation!r}")


def clipped_pg_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    *,
    clip_eps_high: float | None = None,
    aggregation: Aggregation = "token",
    denom: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:  # (B, R), (B, R), (B,), (B, R) -> (), stats
    """PPO/GRPO clipped surrogate loss, to be minimised.

    Per token, with ratio ``rho = exp(logp - old_logp)`` and the sequence's advantage ``A``:
    ``l = -min(rho * A, clip(rho, 1 - clip_eps, 1 + clip_eps_high) * A)``; ``clip_eps_high`` defaults to
    ``clip_eps`` (set it higher for DAPO's "clip-higher"). The loss is :func:`masked_mean` of ``l`` with
    ``aggregation`` (``"token"``: mean over all valid tokens of the batch; ``"sequence"``: per-sequence
    mean, then batch mean; ``denom`` as in :func:`masked_mean` for micro-batches). ``old_logp`` and
    ``advantages`` are treated as constants.

    Stats (over valid tokens): ``clip_frac``, the share of tokens whose gradient the clip removed
    (``A > 0`` and ``rho > 1 + eps_high``, or ``A < 0`` and ``rho < 1 - eps``); ``ratio_mean``.
    """
    if logp.shape != old_logp.shape or logp.shape != mask.shape or advantages.shape != logp.shape[:1]:
        raise ValueError(
            f"expected logp/old_logp/mask (B, R) and advantages (B,), got {tuple(logp.shape)}, "
            f"{tuple(old_logp.shape)}, {tuple(mask.shape)}, {tuple(advantages.shape)}"
        )
    high = clip_eps if clip_eps_high is None else clip_eps_high
    m = mask.bool()
    log_ratio = torch.where(m, logp - old_logp.detach(), torch.zeros_like(logp))  # (B, R)
    ratio = torch.exp(log_ratio)
    adv = advantages.detach().to(ratio.dtype).unsqueeze(-1)  # (B, 1)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1.0 - clip_eps, 1.0 + high) * adv)  # (B, R)
    loss = -masked_mean(surrogate, m, aggregation, denom=denom)
    with torch.no_grad():
        clipped = ((adv > 0) & (ratio > 1.0 + high)) | ((adv < 0) & (ratio < 1.0 - clip_eps))
        n = m.sum().clamp(min=1)
        stats = {
            "clip_frac": float((clipped & m).sum() / n),
            "ratio_mean": float(torch.where(m, ratio, torch.zeros_like(ratio)).sum() / n),
        }
    return loss, stats


def k3_kl_tokens(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:  # (B, R), (B, R) -> (B, R)
    """Per-token k3 estimator of KL(policy || ref) on tokens sampled from the policy:
    ``k3 = exp(ref - logp) - (ref - logp) - 1 >= 0`` (0 iff ``logp == ref``; unbiased, low variance).

    ``ref - logp`` is clamped to ``±20`` so that a near-zero policy prob cannot overflow ``exp``.
    Gradients flow into ``logp``; ``ref_logp`` is a constant (the frozen SFT AV).
    """
    delta = (ref_logp.detach() - logp).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return torch.exp(delta) - delta - 1.0


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # -> (B,)
    """Per-sequence mean of :func:`k3_kl_tokens` over the valid tokens (0 for an empty sequence).

    For the loss term use ``masked_mean(k3_kl_tokens(...), mask, aggregation)`` so the KL is
    aggregated exactly like the policy loss; this per-sequence form is for logging.
    """
    m = mask.bool()
    k3 = torch.where(m, k3_kl_tokens(logp, ref_logp), torch.zeros_like(logp))  # (B, R)
    return k3.sum(-1) / m.sum(-1).clamp(min=1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log softmax(logits / T)`` at the given tokens: (B, R, V), (B, R) -> (B, R).

    ``logits[:, t]`` must be the logits that PREDICT ``tokens[:, t]`` (shift by one from the
    model output yourself). Use raw logits and the sampling temperature: log-probs of
    top-p/top-k filtered distributions make the importance ratio wrong.
    """
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # (B, R, V)
    return logp.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)


def response_valid(texts: list[str], truncated: list[bool]) -> torch.Tensor:  # -> (N,) bool
    """True where a response has a complete, non-empty ``<explanation>...</explanation>`` and was not
    cut at the length cap (a response that hit the cap is invalid even if a tag closed before it)."""
    if len(texts) != len(truncated):
        raise ValueError(f"{len(texts)} texts but {len(truncated)} truncation flags")
    ok = [extract_explanation(t) is not None and not cut for t, cut in zip(texts, truncated, strict=True)]
    return torch.tensor(ok, dtype=torch.bool)


def nla_reward(pred: torch.Tensor, gold: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Reconstruction reward: ``-mse_nrm(pred, gold)`` (in [-4, 0], 0 = perfect) where ``valid``,
    else ``-2`` (the score of an orthogonal prediction). (N, d), (N, d), (N,) bool -> (N,).

    The reward is a constant for the policy: it is returned detached. Rows where ``valid`` is False
    may hold anything (e.g. an AR run on an empty string); their values are not looked at.
    """
    err = mse_nrm(pred.detach(), gold.detach())  # (N,)
    return torch.where(valid.bool(), -err, torch.full_like(err, INVALID_REWARD))


def contrastive_reward(
    pred: torch.Tensor, gold: torch.Tensor, negatives: torch.Tensor, weight: float
) -> torch.Tensor:  # (N, d), (N, d), (N, d) -> (N,)
    """Anti-template-collapse bonus: ``weight * (mse_nrm(pred, negative) - mse_nrm(pred, gold))``.

    Positive when the reconstruction is closer to its own activation than to a wrong one (e.g. another
    row's activation, :func:`nla.core.metrics.shuffled`); an explanation that fits every activation equally
    earns 0. Add it to :func:`nla_reward` for valid rows only. Detached, like the reward.
    """
    p = pred.detach()
    return weight * (mse_nrm(p, negatives.detach()) - mse_nrm(p, gold.detach()))


def response_lengths(mask: torch.Tensor) -> torch.Tensor:  # (B, R) -> (B,)
    """Number of real response tokens per row: the sum of the response mask, NOT the padded width."""
    return mask.bool().sum(-1)


def length_penalty(lengths: torch.Tensor, *, target: int, coef: float) -> torch.Tensor:  # (N,) -> (N,)
    """Hinged length penalty: ``-coef * max(0, length - target)`` (0 at or under ``target``).

    Trap: ``lengths`` must count real (non-pad) response tokens, e.g. :func:`response_lengths` of the
    response mask. Using the padded width gives every response in a batch the same length, hence the
    same penalty, which group-normalised advantages then cancel exactly: the penalty silently does nothing.
    """
    if lengths.dtype.is_floating_point and not torch.equal(lengths, lengths.round()):
        raise ValueError("lengths must be whole token counts (did you pass a padded or averaged tensor?)")
    if bool((lengths < 0).any()):
        raise ValueError("lengths must be non-negative token counts")
    return -coef * (lengths.float() - target).clamp(min=0.0)
