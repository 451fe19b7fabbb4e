"""The RL reward terms: pure functions of a batch, hand-computed cases, and the weighted sum against the reward
the trainer computed before the terms existed (nla_reward + masked contrastive bonus + length penalty)."""

from __future__ import annotations

import functools

import pytest
import torch

from nla.core import rl_math
from nla.models.sequences import Responses
from nla.train.rl.config import RLConfig
from nla.train.rl.rewards import (
    RewardInputs,
    RewardTerm,
    contrastive,
    custom_term,
    format_penalty,
    length,
    reconstruction,
    reward_terms,
    total_reward,
)
from nla.train.rl.rollout import Rollouts


def inputs(gold, pred, valid, lengths=None, group_size=1) -> RewardInputs:
    gold, pred = torch.tensor(gold, dtype=torch.float32), torch.tensor(pred, dtype=torch.float32)
    lengths = torch.tensor(lengths if lengths is not None else [1] * len(gold))
    return RewardInputs(gold, pred, torch.tensor(valid), lengths, group_size)


def test_reconstruction_is_minus_mse_nrm_on_valid_rows() -> None:
    # mse_nrm = 2 (1 - cos): same direction 0, orthogonal 2, opposite 4; an invalid row (zero prediction) is 0
    x = inputs([[1, 0], [0, 1], [3, 0], [1, 0]], [[2, 0], [5, 0], [-1, 0], [0, 0]], [True, True, True, False])
    assert reconstruction(x).tolist() == pytest.approx([0.0, -2.0, -4.0, 0.0], abs=1e-5)


def test_format_penalty_is_minus_two_on_invalid_rows() -> None:
    x = inputs([[1, 0]] * 4, [[1, 0]] * 4, [True, False, True, False])
    assert format_penalty(x).tolist() == [0.0, -2.0, 0.0, -2.0]


def test_contrastive_compares_with_the_next_groups_activation() -> None:
    # G = 1, two groups: row 0's negative is gold[1] and row 1's is gold[0]
    x = inputs([[1, 0], [0, 1]], [[1, 0], [1, 1]], [True, True])
    # row 0: mse(pred, [0, 1]) - mse(pred, [1, 0]) = 2 - 0; row 1: [1, 1] is as close to [1, 0] as to [0, 1]
    assert contrastive(x).tolist() == pytest.approx([2.0, 0.0], abs=1e-5)
    masked = inputs([[1, 0], [0, 1]], [[1, 0], [1, 1]], [False, True])
    assert contrastive(masked).tolist() == pytest.approx([0.0, 0.0], abs=1e-5)
    one_group = inputs([[1, 0], [0, 1]], [[1, 0], [1, 1]], [True, True], group_size=2)
    assert contrastive(one_group).tolist() == [0.0, 0.0]


def test_length_is_hinged_at_the_target() -> None:
    x = inputs([[1, 0]] * 3, [[1, 0]] * 3, [True] * 3, lengths=[3, 5, 10])
    assert length(x, target=5).tolist() == [0.0, 0.0, -5.0]
    term = RewardTerm("length", 0.1, functools.partial(length, target=5))
    assert term(x).tolist() == pytest.approx([0.0, 0.0, -0.5])


def test_reward_terms_follow_the_options() -> None:
    assert [(t.name, t.weight) for t in reward_terms(RLConfig())] == [("reconstruction", 1.0), ("format", 1.0)]
    cfg = RLConfig(contrastive_weight=0.5, length_target=4, length_coef=0.01)
    assert [(t.name, t.weight) for t in reward_terms(cfg)] == [
        ("reconstruction", 1.0),
        ("format", 1.0),
        ("contrastive", 0.5),
        ("length", 0.01),
    ]
    assert [t.name for t in reward_terms(RLConfig(length_coef=0.01))] == ["reconstruction", "format"]  # target 0


@pytest.mark.parametrize("kw", [{}, {"contrastive_weight": 0.5, "length_target": 4, "length_coef": 0.01}])
def test_weighted_sum_equals_the_old_reward_exactly(kw) -> None:
    cfg = RLConfig(group_size=4, **kw)
    g = torch.Generator().manual_seed(0)
    gold = torch.randn(12, 16, generator=g) * 3  # 3 activations x G = 4
    valid = torch.rand(12, generator=g) > 0.3
    pred = torch.where(valid[:, None], torch.randn(12, 16, generator=g), torch.zeros(12, 16))
    lengths = torch.randint(0, 12, (12,), generator=g)
    x = RewardInputs(gold, pred, valid, lengths, cfg.group_size)
    total, parts = total_reward(reward_terms(cfg), x)

    old = rl_math.nla_reward(pred, gold, valid)  # the trainer's reward before the terms
    if cfg.contrastive_weight:
        bonus = rl_math.contrastive_reward(pred, gold, gold.roll(cfg.group_size, dims=0), cfg.contrastive_weight)
        old = old + torch.where(valid, bonus, torch.zeros_like(bonus))
    if cfg.length_coef > 0 and cfg.length_target > 0:
        old = old + rl_math.length_penalty(lengths, target=cfg.length_target, coef=cfg.length_coef)
    assert torch.equal(total, old)
    assert list(parts) == [t.name for t in reward_terms(cfg)]
    torch.testing.assert_close(sum(parts.values()), total)
    assert (parts["format"] < 0).sum() == (~valid).sum() and 0 < int(valid.sum()) < 12


def test_custom_term_and_errors() -> None:
    resp = Responses([[1, 2], [3]], ["<explanation>a</explanation>", "b"], [False, False])
    ro = Rollouts(torch.ones(2, 4), resp, torch.tensor([True, False]))
    x = RewardInputs.of(ro, torch.zeros(2, 4), group_size=2)
    assert x.lengths.tolist() == [2, 1] and x.rollouts is ro
    term = custom_term(lambda r: torch.tensor([float(len(t)) for t in r.responses.texts], dtype=torch.float64))
    total, parts = total_reward([term], x)
    assert list(parts) == ["custom"] and total.dtype == torch.float32 and total.tolist() == [28.0, 1.0]
    with pytest.raises(ValueError, match="unique"):
        total_reward([term, term], x)
    with pytest.raises(ValueError, match="no reward terms"):
        total_reward([], x)
