"""The run plan, the estimate line, the estimate timed on the run, and the progress callbacks of generation."""

from __future__ import annotations

import pytest

from nla.explain.progress import (
    CALIBRATION_STEPS,
    TYPICAL_BATCH_STEPS,
    Calibration,
    LiveEstimate,
    Plan,
    estimate_line,
    human_seconds,
    progress_bar,
    score_seconds,
)
from nla.models.ar import ActivationReconstructor
from nla.models.av import ActivationVerbalizer
from nla.models.sequences import generation_progress


def test_plan_counts_batches_of_greedy_and_samples() -> None:
    p = Plan(items=8, candidates=4, batch_size=16, max_new_tokens=150, best_of=True)
    assert (p.generations, p.batches) == (32, 1)  # 8 activations with their 4 candidates: one batch
    assert Plan(items=40, candidates=1, batch_size=16, max_new_tokens=150).batches == 3
    assert Plan(items=40, candidates=4, batch_size=16, max_new_tokens=150, best_of=True).batches == 3
    assert p.batch_shape == (8, 4) and Plan(40, 4, 16, 150, best_of=True).batch_shape == (16, 4)
    assert p.seconds(Calibration(1.0, 0.1)) == pytest.approx(1.0 + TYPICAL_BATCH_STEPS * 0.1)
    assert p.seconds(Calibration(1.0, 0.1, score=0.5)) == pytest.approx(1.0 + TYPICAL_BATCH_STEPS * 0.1 + 32 * 0.5)
    assert Plan(1, 1, 16, 20).seconds(Calibration(0.0, 1.0)) == 20  # capped by max_new_tokens
    line = estimate_line(p, 5400)
    assert "8 positions x 4 candidate(s) = 32 explanations" in line and "1 h 30 min" in line
    assert "--positions" in line and "--best-of 1 (4x fewer)" in line
    assert [human_seconds(s) for s in (42, 300)] == ["42 s", "5 min"]


def test_generation_reports_every_batch_and_the_run_times_its_own_estimate(tiny_target) -> None:
    import torch

    av = ActivationVerbalizer.from_target(tiny_target, injection_scale=8.0, layer=1)
    seen: list[int] = []
    with generation_progress(seen.append):
        av.sample(torch.randn(5, 64), max_new_tokens=2, batch_size=2, num_samples=2)
    assert seen == [2, 2, 2, 2, 2]  # 10 answers in batches of 2
    av.sample(torch.randn(2, 64), max_new_tokens=1)  # outside the block: nothing reported
    assert len(seen) == 5
    assert score_seconds(None) == 0 and score_seconds(ActivationReconstructor.from_target(tiny_target, layer=1)) > 0
    plan = Plan(items=4, candidates=2, batch_size=2, max_new_tokens=20)
    told: list[float] = []
    est = LiveEstimate(av, plan, score=0.5, on_ready=told.append)
    with progress_bar(plan.generations, estimate=est):
        av.sample(torch.randn(4, 64), max_new_tokens=20, num_samples=2, batch_size=4, seed=0)
    assert len(told) == 1 and told[0] == est.seconds  # once, during the first batch
    cal = est.calibration
    assert cal is not None and cal.prefill > 0 and cal.step > 0 and cal.score == 0.5
    assert est.seconds == pytest.approx(plan.batches * (cal.prefill + 20 * cal.step) + 8 * 0.5)
    assert len(est._starts) == 3 + CALIBRATION_STEPS  # the hook stopped timing once the estimate was made
    short = LiveEstimate(av, plan)  # answers shorter than the timed steps: settled when the batch ends
    with progress_bar(plan.generations, estimate=short):
        av.sample(torch.randn(2, 64), max_new_tokens=1, num_samples=2, batch_size=4)
    assert short.calibration is not None and short.calibration.prefill > 0 and short.calibration.step == 0
    with progress_bar(6, desc="t") as bar:
        av.sample(torch.randn(3, 64), max_new_tokens=1, num_samples=2, batch_size=4)
        assert bar.n == 6
