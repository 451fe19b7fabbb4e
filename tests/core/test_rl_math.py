from __future__ import annotations

import math

import pytest
import torch

from nla.core.metrics import mse_nrm
from nla.core.rl_math import (
    clipped_pg_loss,
    contrastive_reward,
    grpo_advantages,
    k3_kl,
    k3_kl_tokens,
    length_penalty,
    masked_mean,
    nla_reward,
    response_lengths,
    response_valid,
    token_logprobs,
)

# ---------------------------------------------------------------- advantages


def test_constant_rewards_give_exactly_zero_advantages() -> None:
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.1, -2.0, -2.0, -2.0, -2.0, 0.3, 0.7, 0.3, 0.7])
    adv = grpo_advantages(rewards, 4)
    assert adv.shape == (3, 4)
    assert torch.equal(adv[:2], torch.zeros(2, 4))  # exact, not approx
    assert torch.equal(grpo_advantages(torch.full((2, 3), 1 / 3), 3, normalize_std=False), torch.zeros(2, 3))
    assert adv[2].abs().sum() > 0


def test_one_group_by_hand() -> None:
    # mean 2.5, population std sqrt(((1.5^2 + 0.5^2) * 2) / 4) = sqrt(1.25)
    adv = grpo_advantages(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), 4)
    s = math.sqrt(1.25)
    assert torch.allclose(adv, torch.tensor([[-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s]]), atol=1e-5)
    raw = grpo_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0]), 4, normalize_std=False)
    assert torch.allclose(raw, torch.tensor([[-1.5, -0.5, 0.5, 1.5]]))


def test_advantages_are_per_group_and_flat_input_is_row_major() -> None:
    adv = grpo_advantages(torch.tensor([0.0, 1.0, 10.0, 30.0]), 2)
    assert torch.allclose(adv, torch.tensor([[-1.0, 1.0], [-1.0, 1.0]]), atol=1e-5)


def test_advantage_shape_errors() -> None:
    with pytest.raises(ValueError):
        grpo_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError):
        grpo_advantages(torch.zeros(2, 3), 2)


# ---------------------------------------------------------------- clipped policy loss


def _hand_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # ratios [[1.5, 1], [0.5, 1]], advantages [+1, -1]
    old = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]])
    logp = old + torch.log(torch.tensor([[1.5, 1.0], [0.5, 1.0]]))
    return logp, old, torch.tensor([1.0, -1.0])


def test_clipped_loss_by_hand() -> None:
    logp, old, adv = _hand_batch()
    # per-token surrogate: min(1.5, 1.2) = 1.2; 1; min(-0.5, -0.8) = -0.8; -1
    loss, stats = clipped_pg_loss(logp, old, adv, torch.ones(2, 2, dtype=torch.bool))
    assert loss.item() == pytest.approx(-(1.2 + 1.0 - 0.8 - 1.0) / 4, abs=1e-6)
    assert stats["clip_frac"] == pytest.approx(0.5)
    assert stats["ratio_mean"] == pytest.approx(1.0, abs=1e-6)

    mask = torch.tensor([[True, True], [True, False]])
    tok, _ = clipped_pg_loss(logp, old, adv, mask)
    seq, _ = clipped_pg_loss(logp, old, adv, mask, aggregation="sequence")
    assert tok.item() == pytest.approx(-(1.2 + 1.0 - 0.8) / 3, abs=1e-6)
    assert seq.item() == pytest.approx(-((1.2 + 1.0) / 2 - 0.8) / 2, abs=1e-6)
    with pytest.raises(ValueError):
        clipped_pg_loss(logp, old, adv, mask, aggregation="batch")  # type: ignore[arg-type]


def _grad(ratio: float, adv: float, **kw: float) -> float:
    old = torch.tensor([[-1.0]])
    logp = (old + math.log(ratio)).requires_grad_(True)
    loss, _ = clipped_pg_loss(logp, old, torch.tensor([adv]), torch.ones(1, 1, dtype=torch.bool), 0.2, **kw)
    loss.backward()
    return float(logp.grad.item())


def test_clipping_zeroes_gradient_only_in_the_trusted_direction() -> None:
    assert _grad(1.5, +1.0) == 0.0  # positive advantage, ratio above 1 + eps: clipped
    assert _grad(0.5, -1.0) == 0.0  # negative advantage, ratio below 1 - eps: clipped
    assert _grad(1.1, +1.0) == pytest.approx(-1.1)  # inside the trust region: d(-rho A)/dlogp = -rho A
    assert _grad(0.5, +1.0) == pytest.approx(-0.5)  # ratio low but advantage positive: still pushed up
    assert _grad(1.5, -1.0) == pytest.approx(1.5)  # ratio high but advantage negative: still pushed down
    assert _grad(1.5, +1.0, clip_eps_high=0.6) == pytest.approx(-1.5)  # clip-higher widens the upper bound


def test_masked_tokens_get_zero_gradient_even_if_garbage() -> None:
    logp = torch.tensor([[-1.0, -2.0, float("-inf")], [-0.5, float("nan"), -3.0]], requires_grad=True)
    old = torch.tensor([[-1.1, -2.0, -1.0], [-0.5, -1.0, -3.1]])  # valid ratios inside the clip range
    mask = torch.tensor([[True, True, False], [True, False, True]])
    for agg in ("token", "sequence"):
        logp.grad = None
        loss, stats = clipped_pg_loss(logp, old, torch.tensor([1.0, -0.5]), mask, aggregation=agg)
        loss.backward()
        assert torch.isfinite(loss) and math.isfinite(stats["ratio_mean"])
        assert torch.equal(logp.grad[~mask], torch.zeros(2))
        assert (logp.grad[mask] != 0).all()


def test_tiny_policy_learns_the_rewarded_token() -> None:
    torch.manual_seed(0)
    logits = torch.zeros(5, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=0.5)
    actions = torch.arange(5).repeat(2)  # one group of G=10 samples covering every token
    rewards = (actions == 2).float()
    adv = grpo_advantages(rewards, 10).flatten()
    mask = torch.ones(10, 1, dtype=torch.bool)
    start = torch.log_softmax(logits, -1)[2].item()
    for _ in range(3):  # rollout, then 4 inner epochs on the same samples (exercises the clip)
        old = torch.log_softmax(logits.detach(), -1)[actions].unsqueeze(-1)  # (10, 1)
        for _ in range(4):
            logp = torch.log_softmax(logits, -1)[actions].unsqueeze(-1)
            loss, stats = clipped_pg_loss(logp, old, adv, mask)
            opt.zero_grad()
            loss.backward()
            opt.step()
    end = torch.log_softmax(logits, -1)[2].item()
    assert end > start + 0.5
    assert stats["clip_frac"] > 0  # late inner epochs hit the trust region
    assert logits.argmax().item() == 2


@pytest.mark.parametrize("agg", ["token", "sequence"])
def test_micro_batches_with_denom_sum_to_full_batch(agg: str) -> None:
    logp = torch.randn(4, 6) - 2.0
    old = logp + 0.3 * torch.randn(4, 6)
    adv = torch.tensor([1.0, -0.5, 2.0, -1.0])
    mask = torch.rand(4, 6) > 0.3
    mask[:, 0] = True
    full, _ = clipped_pg_loss(logp, old, adv, mask, aggregation=agg)
    denom = float(mask.sum()) if agg == "token" else 4.0
    parts = [
        clipped_pg_loss(logp[s], old[s], adv[s], mask[s], aggregation=agg, denom=denom)[0]
        for s in (slice(0, 1), slice(1, 4))
    ]
    assert (parts[0] + parts[1]).item() == pytest.approx(full.item(), abs=1e-6)
    naive = [clipped_pg_loss(logp[s], old[s], adv[s], mask[s], aggregation=agg)[0] for s in (slice(0, 1), slice(1, 4))]
    assert (naive[0] + naive[1]).item() != pytest.approx(full.item(), abs=1e-6)


# ---------------------------------------------------------------- KL


def test_k3_zero_iff_equal_and_positive_otherwise() -> None:
    logp = torch.tensor([[-1.0, -2.0, -0.3], [-4.0, -0.1, -9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    assert torch.equal(k3_kl(logp, logp.clone(), mask), torch.zeros(2))
    ref = logp + torch.tensor([[0.5, -0.5, 0.0], [2.0, -3.0, 100.0]])
    tok = k3_kl_tokens(logp, ref)
    assert tok[0, 0].item() == pytest.approx(math.exp(0.5) - 0.5 - 1)
    assert tok[0, 2].item() == 0.0 and (tok[:, :2] > 0).all()
    per_seq = k3_kl(logp, ref, mask)
    assert per_seq[0].item() == pytest.approx((tok[0, 0] + tok[0, 1]).item() / 3, rel=1e-6)
    # the masked +100 token is ignored
    assert per_seq[1].item() == pytest.approx((tok[1, 0] + tok[1, 1]).item() / 2, rel=1e-6)
    assert torch.isfinite(k3_kl_tokens(torch.tensor([[-1e4]]), torch.tensor([[0.0]]))).all()


def test_k3_gradient_pulls_policy_towards_reference() -> None:
    logp = torch.tensor([[-2.0, -0.5]], requires_grad=True)
    ref = torch.tensor([[-1.0, -1.0]])
    masked_mean(k3_kl_tokens(logp, ref), torch.ones(1, 2)).backward()
    assert logp.grad[0, 0] < 0 < logp.grad[0, 1]  # descent raises the too-low logp, lowers the too-high one


# ---------------------------------------------------------------- rewards


def test_reward_identical_is_zero_and_invalid_is_minus_two() -> None:
    gold = torch.randn(4, 8) * 50
    pred = gold * 3.0  # same direction, different norm
    pred[3] = float("nan")  # AR output for an invalid row may be garbage
    valid = torch.tensor([True, True, False, False])
    r = nla_reward(pred, gold, valid)
    assert r[:2].abs().max() < 1e-5
    assert torch.equal(r[2:], torch.tensor([-2.0, -2.0]))
    ortho = nla_reward(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([True]))
    assert ortho.item() == pytest.approx(-2.0, abs=1e-5)
    assert not nla_reward(gold.requires_grad_(True), gold, valid).requires_grad


def test_response_valid() -> None:
    texts = [
        "<explanation>Talks about pasta.</explanation>",
        "<explanation>Talks about pasta.",  # never closed
        "<explanation>Fine.</explanation>",  # closed but cut at the cap
        "<explanation> </explanation>",  # empty
        "preamble <explanation>ok</explanation> trailing",
    ]
    got = response_valid(texts, [False, False, True, False, False])
    assert got.dtype == torch.bool
    assert got.tolist() == [True, False, False, False, True]
    with pytest.raises(ValueError):
        response_valid(texts, [False])


def test_contrastive_reward() -> None:
    gold = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    neg = gold.flip(0)
    # pred == gold: mse(pred, neg) = 2 (orthogonal), mse(pred, gold) = 0
    assert torch.allclose(contrastive_reward(gold, gold, neg, 0.5), torch.tensor([1.0, 1.0]), atol=1e-5)
    template = torch.ones(2, 2)  # equally close to both: no bonus
    assert torch.allclose(contrastive_reward(template, gold, neg, 0.5), torch.zeros(2), atol=1e-5)
    pred = torch.tensor([[1.0, 1.0]])
    expected = 0.3 * (mse_nrm(pred, torch.tensor([[0.0, 1.0]])) - mse_nrm(pred, torch.tensor([[1.0, 0.0]])))
    assert torch.allclose(contrastive_reward(pred, gold[:1], neg[:1], 0.3), expected)


def test_length_penalty_ignores_padding() -> None:
    # three responses of 3, 6 and 9 real tokens, right-padded to width 9 and then to width 20
    mask = torch.zeros(3, 9, dtype=torch.bool)
    for i, n in enumerate((3, 6, 9)):
        mask[i, :n] = True
    wide = torch.cat([mask, torch.zeros(3, 11, dtype=torch.bool)], dim=1)
    pen = length_penalty(response_lengths(mask), target=5, coef=0.1)
    assert torch.allclose(pen, torch.tensor([0.0, -0.1, -0.4]))
    assert torch.equal(length_penalty(response_lengths(wide), target=5, coef=0.1), pen)
    # the trap: padded width gives one penalty for all, which group advantages cancel
    padded = length_penalty(torch.full((3,), mask.shape[1]), target=5, coef=0.1)
    assert torch.equal(grpo_advantages(padded, 3), torch.zeros(1, 3))
    assert grpo_advantages(pen, 3).abs().sum() > 0
    with pytest.raises(ValueError):
        length_penalty(torch.tensor([2.5]), target=5, coef=0.1)


# ---------------------------------------------------------------- helpers


def test_token_logprobs_match_softmax() -> None:
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]])  # (1, 2, 3)
    tokens = torch.tensor([[0, 2]])
    got = token_logprobs(logits, tokens)
    z = math.log(math.exp(2) + 1 + math.exp(-1))
    assert torch.allclose(got, torch.tensor([[2.0 - z, -math.log(3)]]))
    hot = token_logprobs(logits, tokens, temperature=2.0)
    assert hot[0, 0] < got[0, 0]  # a higher temperature flattens the peak
