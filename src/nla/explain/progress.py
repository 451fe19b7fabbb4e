"""How long explaining will take: an estimate timed on the run itself, and a progress bar.

Generation and scoring make the cost of ``nla explain``: each batch of up to ``batch_size`` activations
(with all their candidates) runs one prefill of the AV prompt per activation, then one decoding step per
token until its longest answer stops; then the AR reads every answer. So

    seconds ~= batches * (prefill + steps * step) + answers * score

where ``prefill``, ``step`` and ``score`` are timed on this machine, now: the first two on the run's own
first batch as it decodes (:class:`LiveEstimate`: its prefill and first decoding steps, so the estimate
comes a second or two into the run and costs nothing), ``score`` by one AR pass over a few typical answers
before it (:func:`score_seconds`); ``steps`` is the typical length of a batch's longest answer,
:data:`TYPICAL_BATCH_STEPS` (measured on the shipped NLA; capped by ``max_new_tokens``). Best of K decodes
the greedy answer and K-1 samples of each activation in the same batch (:mod:`nla.generation.hf`: they
share its prefill), so a batch holds K times more answers.

>>> plan = Plan(items=8, candidates=4, batch_size=16, max_new_tokens=150, best_of=True)
>>> plan.generations, plan.batches, plan.batch_shape
(32, 1, (8, 4))
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from nla.models.ar import ActivationReconstructor
from nla.models.av import ActivationVerbalizer
from nla.models.sequences import generation_progress

CALIBRATION_STEPS = 5  # decoding steps of the first batch timed for the estimate
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


class LiveEstimate:
    """The run's estimate, timed on its own first batch while it decodes (no separate calibration run):
    the prefill (the prompt's prefix and the batch's prefill forwards) and the median of the first
    :data:`CALIBRATION_STEPS` decoding steps (the slowest, usually the first, which pays one-time costs of
    its shapes, left out), plus ``score`` seconds of the AR per answer. :attr:`seconds` is set, and
    ``on_ready(seconds)`` called once, as soon as those steps have run, or when the first batch ends if
    its answers stop sooner. A backend whose forwards cannot be seen gives no estimate (None)."""

    def __init__(
        self, av: ActivationVerbalizer, plan: Plan, score: float = 0.0, on_ready: Callable[[float], None] | None = None
    ) -> None:
        self.plan, self.score, self.on_ready = plan, score, on_ready
        self.calibration: Calibration | None = None
        self._starts: list[float] = []
        self._hook = av.model.get_input_embeddings().register_forward_pre_hook(self._forward)

    @property
    def seconds(self) -> float | None:
        return None if self.calibration is None else self.plan.seconds(self.calibration)

    def _forward(self, *_: Any) -> None:
        if self.calibration is None:
            self._starts.append(time.perf_counter())
            if len(self._starts) > 2 + CALIBRATION_STEPS:  # prefix, prefill, then the steps, each one timed
                self._settle()

    def batch_done(self) -> None:
        """The first batch (or a later one) finished: settle the estimate if its steps were too few."""
        if self.calibration is None and self._starts:
            self._settle(time.perf_counter())

    def _settle(self, end: float | None = None) -> None:
        marks = self._starts[2:] + ([end] if end is not None else [])
        steps = sorted(b - a for a, b in zip(marks, marks[1:], strict=False))
        steps = steps[: max(1, len(steps) - 1)]
        prefill = (marks[0] if marks else (end or self._starts[-1])) - self._starts[0]
        self.calibration = Calibration(prefill, steps[len(steps) // 2] if steps else 0.0, self.score)
        if self.on_ready is not None:
            self.on_ready(self.plan.seconds(self.calibration))

    def close(self) -> None:
        self._hook.remove()


def score_seconds(ar: ActivationReconstructor | None, answers: int = 4) -> float:
    """Seconds the AR takes per typical answer (after a one-answer warm-up of its shapes); 0 without an AR."""
    if ar is None:
        return 0.0
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
def progress_bar(total: int, desc: str = "explain", estimate: LiveEstimate | None = None, **kw: Any) -> Iterator[Any]:
    """A tqdm bar (with ETA) over ``total`` generated answers, fed by every generation inside the block
    (which also tells ``estimate`` when a batch ends)."""
    bar = tqdm(total=total, desc=desc, unit="expl", dynamic_ncols=True, **kw)

    def done(rows: int) -> None:
        if estimate is not None:
            estimate.batch_done()
        bar.update(rows)

    try:
        with generation_progress(done):
            yield bar
    finally:
        bar.close()
        if estimate is not None:
            estimate.close()


__all__ = [
    "TYPICAL_ANSWER",
    "TYPICAL_BATCH_STEPS",
    "WARN_SECONDS",
    "CALIBRATION_STEPS",
    "Calibration",
    "LiveEstimate",
    "Plan",
    "estimate_line",
    "human_seconds",
    "progress_bar",
    "score_seconds",
]
