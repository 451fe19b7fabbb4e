"""How long explaining will take: a quick calibration, an estimate before the run, and a progress bar.

Generation dominates the cost of ``nla explain``: each batch of up to ``batch_size`` activations (with all
their candidates) runs one prefill of the AV prompt, then one decoding step per token until its longest
answer stops. So

    seconds ~= batches * (prefill + steps * step)

where ``prefill`` and ``step`` are timed on this machine, now, by :func:`calibrate` (one tiny generation of
a full batch, its forwards timed one by one: a second or two on 2 cores), and ``steps`` is the typical
length of a batch's longest answer, :data:`TYPICAL_BATCH_STEPS` (measured on the shipped NLA; capped by
``max_new_tokens``). Best of K decodes the greedy answer and K-1 samples of each activation in the same
batch (:mod:`nla.generation.hf`: they share its prefill), so a batch holds K times more answers.

>>> plan = Plan(items=8, candidates=4, batch_size=16, max_new_tokens=150, best_of=True)
>>> plan.generations, plan.batches
(32, 1)
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
    best_of: bool = False  # candidates = the greedy answer + (K-1) samples per item

    @property
    def generations(self) -> int:
        return self.items * self.candidates

    @property
    def batches(self) -> int:
        return math.ceil(self.items / self.batch_size)

    def seconds(self, prefill: float, step: float) -> float:
        steps = min(self.max_new_tokens, TYPICAL_BATCH_STEPS)
        return self.batches * (prefill + steps * step)


def calibrate(av: ActivationVerbalizer, rows: int) -> tuple[float, float]:
    """(prefill seconds, seconds per decoding step) of a batch of ``rows`` answers, timed here and now: one
    generation of 6 tokens whose forwards are timed one by one (the slowest decoding step, usually the first,
    which pays one-time costs of its shapes, is left out). A backend whose forwards cannot be seen gives
    (its time, 0)."""
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(max(1, rows), int(av.d_model), generator=g)  # (rows, d): any direction will do
    starts: list[float] = []
    hook = av.model.get_input_embeddings().register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))
    t0 = time.perf_counter()
    try:
        av.sample(vectors, max_new_tokens=6, batch_size=vectors.shape[0])
    finally:
        hook.remove()
    end = time.perf_counter()
    if len(starts) < 3:  # no visible forwards (another backend), or the prompt had no prefix
        return end - t0, 0.0
    marks = [*starts[2:], end]  # forwards 0 and 1: the prompt's prefix and the rest of it (the prefill)
    steps = sorted(b - a for a, b in zip(marks, marks[1:], strict=False))[: max(1, len(marks) - 2)]
    return starts[2] - t0, steps[len(steps) // 2] if steps else 0.0


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
