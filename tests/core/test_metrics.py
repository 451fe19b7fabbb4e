"""The pure metrics that nothing else tests directly."""

from __future__ import annotations

import pytest
import torch

from nla.core.metrics import between_group_share


def _groups(n_groups: int, per: int, between_sd: float, within_sd: float, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_groups, 16, generator=gen) * between_sd  # (G, d)
    x = centres.repeat_interleave(per, 0) + torch.randn(n_groups * per, 16, generator=gen) * within_sd
    return x, torch.arange(n_groups).repeat_interleave(per)


@pytest.mark.parametrize(("between_sd", "within_sd", "share"), [(1.0, 3**0.5, 0.25), (1.0, 1.0, 0.5), (0.0, 1.0, 0.0)])
def test_between_group_share_recovers_a_known_share_with_few_rows_per_group(between_sd, within_sd, share) -> None:
    x, groups = _groups(400, 4, between_sd, within_sd)
    assert between_group_share(x, groups) == pytest.approx(share, abs=0.03)
    # the naive share of the group means' variance is biased up by within_sd**2 / per: the estimator is not that
    means = torch.stack([x[groups == g].mean(0) for g in range(400)])
    naive = float(means.var(0).sum() / x.var(0).sum())
    assert naive > share + 0.1


def test_between_group_share_handles_unequal_groups_and_refuses_degenerate_input() -> None:
    x, groups = _groups(300, 6, 1.0, 1.0, seed=1)
    keep = torch.rand(len(groups), generator=torch.Generator().manual_seed(2)) < 0.6  # 1-6 rows a group
    assert between_group_share(x[keep], groups[keep]) == pytest.approx(0.5, abs=0.05)
    with pytest.raises(ValueError):
        between_group_share(x[:5], torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError):
        between_group_share(x[:5], torch.arange(5))
