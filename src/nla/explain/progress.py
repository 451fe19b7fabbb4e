"""How long explaining will take: a quick calibration, an estimate before the run, and a progress bar.

Generation and scoring make the cost of ``nla explain``: each batch of up to ``batch_size`` activations
(with all their candidates) runs one prefill of the AV prompt per activation, then one decoding step per
token until its longest answer stops; then the AR reads every answer. So

    seconds ~= batches * (prefill + steps * step) + answers * score

where ``prefill``, ``step`` and ``score`` are timed on this machine, now, at the shape of the run's largest
batch, by :func:`calibrate` (one tiny generation of that batch, its forwards timed one by one, and one AR
pass over a few typical answers: a few seconds on 2 cores), and ``steps`` is the typical length of a
batch's longest answer, :data:`TYPICAL_BATCH_STEPS` (measured on the shipped NLA; capped by
``max_new_tokens``). Best of K decodes the greedy answer and K-1 samples of each activation in the same
batch (:mod:`nla.generation.hf`: they share its prefill), so a batch holds K times more answers.

>>> plan = Plan(items=8, candidates=4, batch_size=16, max_new_tokens=150, best_of=True)
>>> plan.generations, plan.batches, plan.batch_shape
(32, 1, (8, 4))
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

from nla.models.ar import ActivationReconstructor
from nla.models.av import ActivationVerbalizer
from nla.models.sequences import generation_progress

TYPICAL_BATCH_STEPS = 96  # a batch's longest answer, shipped NLA: 87-106 steps, mean 94 (docs/explain.md)
WARN_SECONDS = 60.0  # runs estimated longer than this get a line saying so, and how to go faster
# what the AR reads per answer when calibrating: an answer of the shipped NLA's form and typical length
TYPICAL_ANSWER = (
    'Final token: " Tower", the start of a word. Next: " and" 61%, "," 33%, " was" 14%. Topic: history; words: '
    "tower, city. Language: English. Setting: chat, the assistant answers a request for an explanation. Next "
    "comes a new word (98%)."
)


@dataclass(frozen=True)
class Calibration:
    """Seconds of one batch's prefill, of one decoding step of that batch, and of the AR per answer."""

    prefill: float
    step: float
    score: float = 0.0  # 0: no AR (the answers are not scored)


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

    @property
    def batch_shape(self) -> tuple[int, int]:
        """(activations, answers per activation) of the largest batch: what :func:`calibrate` times."""
        return min(self.items, self.batch_size), self.candidates

    def seconds(self, cal: Calibration) -> float:
        steps = min(self.max_new_tokens, TYPICAL_BATCH_STEPS)
        return self.batches * (cal.prefill + steps * cal.step) + self.generations * cal.score


def calibrate(
    av: ActivationVerbalizer, shape: tuple[int, int], ar: ActivationReconstructor | None = None
) -> Calibration:
    """Time a batch of ``shape`` = (activations, answers per activation) here and now: one generation of 6
    tokens whose forwards are timed one by one (the slowest decoding step, usually the first, which pays
    one-time costs of its shapes, is left out), then, with an AR, one pass over 4 typical answers. A backend
    whose forwards cannot be seen gives (its time, 0)."""
    n, k = max(1, shape[0]), max(1, shape[1])
    vectors = torch.randn(n, int(av.d_model), generator=torch.Generator().manual_seed(0))  # any direction will do
    starts: list[float] = []
    hook = av.model.get_input_embeddings().register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))
    t0 = time.perf_counter()
    try:
        av.sample(vectors, max_new_tokens=6, num_samples=k, batch_size=n * k)
    finally:
        hook.remove()
    end = time.perf_counter()
    score = _score_seconds(ar) if ar is not None else 0.0
    if len(starts) < 3:  # no visible forwards (another backend), or the prompt had no prefix
        return Calibration(end - t0, 0.0, score)
    marks = [*starts[2:], end]  # forwards 0 and 1: the prompt's prefix and the rest of it (the prefill)
    steps = sorted(b - a for a, b in zip(marks, marks[1:], strict=False))[: max(1, len(marks) - 2)]
    return Calibration(starts[2] - t0, steps[len(steps) // 2] if steps else 0.0, score)


def _score_seconds(ar: ActivationReconstructor, answers: int = 4) -> float:
    """Seconds the AR takes per typical answer (after a one-answer warm-up of its shapes)."""
    ar.predict(["warm-up"], batch_size=1)
    t0 = time.perf_counter()
    ar.predict([TYPICAL_ANSWER] * answers, batch_size=answers)
    return (time.perf_counter() - t0) / answers


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


__all__ = [
    "TYPICAL_ANSWER",
    "TYPICAL_BATCH_STEPS",
    "WARN_SECONDS",
    "Calibration",
    "Plan",
    "calibrate",
    "estimate_line",
    "human_seconds",
    "progress_bar",
]
