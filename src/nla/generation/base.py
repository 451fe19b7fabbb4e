"""The generation backend interface: what turns injected vectors into AV answers.

Every command that makes the AV write (``nla explain``, ``explain-vector``, ``audit``, ``verbalize``, RL
rollouts, best-of-K) calls :meth:`nla.models.av.ActivationVerbalizer.sample`, which hands the work to the
AV's backend. A backend gets the AV (its model, tokenizer, prompt, marker and injection scale), the vectors
and one :class:`Slot` per answer wanted for each vector, and returns the token ids of every answer, in
order: row ``i * S + j`` answers vector ``i`` with slot ``j``. Decoding the ids into text, the stop-token
rule and progress reports are the AV's, the same for every backend.

Backends: ``hf`` (:mod:`nla.generation.hf`, plain torch on the HF model: shared prompt prefix, one prefill
per vector for all its slots, finished answers leave the batch) and ``vllm`` (:mod:`nla.generation.vllm`,
a vLLM engine fed ``prompt_embeds``, as Neuronpedia's NLA server runs it).

>>> from nla.generation import get_backend
>>> get_backend("hf").name
'hf'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from nla.common.errors import NLAError


@dataclass(frozen=True)
class Slot:
    """How one of a vector's answers is decoded: greedy (``temperature`` 0) or sampled at ``temperature``
    with nucleus ``top_p`` (1.0: plain sampling, so raw-logit log-probs are the sampling distribution)."""

    temperature: float = 0.0
    top_p: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


GREEDY = Slot()


@dataclass(frozen=True)
class Request:
    """One generation job: ``len(slots)`` answers for each of ``vectors``."""

    vectors: torch.Tensor  # (N, d) raw activation vectors
    slots: tuple[Slot, ...]  # S answers per vector
    max_new_tokens: int
    stop_ids: tuple[int, ...]  # an answer ends at (and keeps) the first of these
    batch_size: int  # answers decoded together (a batch holds whole vectors where it can)
    seed: int | None  # sampling seed (None: drawn from torch's global RNG)
    rule: Any = None  # a decoding rule (nla.generation.rules.DistinctItems) or None

    @property
    def rows(self) -> int:
        return self.vectors.shape[0] * len(self.slots)


@runtime_checkable
class Backend(Protocol):
    """Turns a :class:`Request` for an AV into the token ids of every answer (``request.rows`` lists,
    each ending with its stop token, or ``max_new_tokens`` long when cut). ``on_rows(n)`` is called as
    answers finish (``n`` at a time), for progress bars."""

    name: str

    def generate(self, av: Any, request: Request, on_rows: Callable[[int], None] | None = None) -> list[list[int]]: ...


_REGISTRY: dict[str, Callable[..., Backend]] = {}


def register(name: str, factory: Callable[..., Backend]) -> None:
    _REGISTRY[name] = factory


def get_backend(name: str, **kwargs: Any) -> Backend:
    """A backend by name (``hf``, ``vllm``); ``kwargs`` go to its constructor."""
    if name not in _REGISTRY:
        raise NLAError(f"unknown generation backend {name!r}; choose from {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**kwargs)


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def group_batches(n_vectors: int, slots: int, batch_size: int) -> list[range]:
    """Ranges of vectors decoded together: ``max(1, batch_size // slots)`` vectors (all their slots) each."""
    per = max(1, batch_size // max(1, slots))
    return [range(s, min(n_vectors, s + per)) for s in range(0, n_vectors, per)]


def check_slots(slots: Sequence[Slot]) -> tuple[Slot, ...]:
    if not slots:
        raise NLAError("a generation request needs at least one slot per vector")
    for s in slots:
        if not 0 < s.top_p <= 1:
            raise NLAError(f"top_p must be in (0, 1], got {s.top_p}")
    return tuple(slots)


__all__ = [
    "GREEDY",
    "Backend",
    "Request",
    "Slot",
    "backend_names",
    "check_slots",
    "get_backend",
    "group_batches",
    "register",
]
