"""How long explaining will take: a quick calibration, an estimate before the run, and a progress bar.

Generation dominates the cost of ``nla explain``: each batch of up to ``batch_size`` answers runs one
prefill of the AV prompt, then one decoding step per token until its longest answer stops. So

    seconds ~= batches * (prefill + steps * step)

where ``prefill`` and ``step`` are timed on this machine, now, by :func:`calibrate` (three tiny generations
of a full batch, a warm-up and two timed ones: a few seconds on 2 cores), and ``steps`` is the typical
length of a batch's longest answer, :data:`TYPICAL_BATCH_STEPS` (measured on the shipped NLA; capped by
``max_new_tokens``). Best of K
decodes the greedy answers and then K-1 samples per position, so it costs about K times the greedy run.

>>> plan = Plan(items=8, candidates=4, batch_size=16, max_new_tokens=150, best_of=True)
>>> plan.generations, plan.batches
(32, 3)
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from nla.models.av import ActivationVerbalizer
from nla.models.sequences import generation_progress

TYPICAL_BATCH_STEPS = 96  # a batch's longest answer, shipped NLA: 87-106 steps, mean 94 (docs/explain.md)
WARN_SECONDS = 60.0  # runs estimated longer than this get a line saying so, and how to go faster


@dataclass
class Plan:
    """The generation work of one run: ``items`` positions (or vectors) x ``candidates`` answers each."""

    items: int
    candidates: int  # best-of K, or num_samples
    batch_size: int
    max_new_tokens: int
    best_of: bool = False  # candidates = greedy pass + (K-1) samples per item, in two passes

    @property
    def generations(self) -> int:
        return self.items * self.candidates

    @property
    def batches(self) -> int:
        if self.best_of and self.candidates > 1:
            greedy = math.ceil(self.items / self.batch_size)
            return greedy + math.ceil(self.items * (self.candidates - 1) / self.batch_size)
        return math.ceil(self.generations / self.batch_size)

    def seconds(self, prefill: float, step: float) -> float:
        steps = min(self.max_new_tokens, TYPICAL_BATCH_STEPS)
        return self.batches * (prefill + steps * step)


def calibrate(av: ActivationVerbalizer, rows: int) -> tuple[float, float]:
    """(prefill seconds, seconds per decoding step) of a batch of ``rows`` answers, timed here and now."""
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(max(1, rows), int(av.d_model), generator=g)  # (rows, d): any direction will do

    def timed(n: int, v: torch.Tensor) -> float:
        t0 = time.perf_counter()
        av.sample(v, max_new_tokens=n, batch_size=v.shape[0])
        return time.perf_counter() - t0

    # warm-up at the full batch shape: the first call of a shape pays one-time costs larger than five decoding
    # steps (seen: 3.6 s against 2.4 s for a batch of 16 on 2 AMD cores), which made the step time 0 and the
    # estimate 4x too short when the warm-up used one row
    timed(1, vectors)
    one, six = timed(1, vectors), timed(6, vectors)
    return one, max(0.0, six - one) / 5


def human_seconds(s: float) -> str:
    """``42 s``, ``3 min``, ``1 h 05 min``."""
    if s < 90:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def estimate_line(plan: Plan, seconds: float, *, what: str = "positions") -> str:
    """The one line printed before a long run: the work, the estimate, and how to make it shorter."""
    faster = ["fewer --positions (e.g. last, or 10:20)" if what == "positions" else "fewer vectors"]
    if plan.candidates > 1:
        faster.append(f"--best-of 1 ({plan.candidates}x fewer)" if plan.best_of else "--num-samples 1")
    return (
        f"{plan.items:,} {what} x {plan.candidates} candidate(s) = {plan.generations:,} explanations "
        f"in {plan.batches:,} batches: about {human_seconds(seconds)} on this machine now; "
        f"to go faster: {', '.join(faster)}"
    )


@contextlib.contextmanager
def progress_bar(total: int, desc: str = "explain", **kw: Any) -> Iterator[Any]:
    """A tqdm bar (with ETA) over ``total`` generated answers, fed by every generation inside the block."""
    bar = tqdm(total=total, desc=desc, unit="expl", dynamic_ncols=True, **kw)
    try:
        with generation_progress(bar.update):
            yield bar
    finally:
        bar.close()


__all__ = ["TYPICAL_BATCH_STEPS", "WARN_SECONDS", "Plan", "calibrate", "estimate_line", "human_seconds", "progress_bar"]
