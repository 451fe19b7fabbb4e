"""Token sequences in and out of the AV: training batches (:class:`AVBatch`), generated responses
(:class:`Responses`), left padding for batched generation, the end-of-turn token of a chat template, and
the hook through which generation reports progress (:func:`generation_progress`)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nla.common.errors import NLAError
from nla.core.text import extract_explanation

_ON_BATCH: contextvars.ContextVar[Callable[[int], None] | None] = contextvars.ContextVar("nla_on_batch", default=None)


@contextlib.contextmanager
def generation_progress(callback: Callable[[int], None]) -> Iterator[None]:
    """While active, :meth:`ActivationVerbalizer.sample` calls ``callback(rows)`` after each generated batch
    (``rows`` answers finished), wherever it is called from: progress bars for code that only calls
    something that generates (``nla eval``, best-of decoding)."""
    token = _ON_BATCH.set(callback)
    try:
        yield
    finally:
        _ON_BATCH.reset(token)


def end_of_turn_id(tokenizer: Any) -> int:
    """The token that closes an assistant turn in the chat template (ChatML ``<|im_end|>``, Gemma
    ``<end_of_turn>``, Llama-3 ``<|eot_id|>``); the tokenizer's EOS when it cannot be told."""
    sentinel = "NLASENTINELXYZ"
    if getattr(tokenizer, "chat_template", None):
        msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": sentinel}]
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
        tail = text.split(sentinel, 1)[1] if sentinel in text else ""
        ids = tokenizer.encode(tail, add_special_tokens=False) if tail.strip() else []
        if ids and ids[0] in set(tokenizer.all_special_ids):
            return int(ids[0])
    if tokenizer.eos_token_id is None:
        raise NLAError("the tokenizer has neither a recognisable end-of-turn token nor an EOS token")
    return int(tokenizer.eos_token_id)


@dataclass
class AVBatch:
    """Prompt + response token ids with the loss mask and the vectors to inject (right padded)."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    response_mask: torch.Tensor  # (B, T) bool: True on response tokens (the SFT targets)
    vectors: torch.Tensor  # (B, d)
    prompt_len: int  # P: the response starts at position P in every row

    def to(self, device: torch.device | str) -> AVBatch:
        return AVBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.response_mask.to(device),
            self.vectors.to(device),
            self.prompt_len,
        )


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


@dataclass
class Responses:
    """Generated responses: token ids (end-of-turn included when it was produced), text, truncation."""

    ids: list[list[int]]
    texts: list[str]
    truncated: list[bool]  # no end-of-turn within the cap
    explanations: list[str | None] = field(init=False)  # inside a complete tag pair, else None

    def __post_init__(self) -> None:
        self.explanations = [extract_explanation(t) for t in self.texts]

    def take(self, rows: Sequence[int]) -> Responses:
        """The responses at ``rows``, in that order."""
        return Responses([self.ids[r] for r in rows], [self.texts[r] for r in rows], [self.truncated[r] for r in rows])

    def __add__(self, other: Responses) -> Responses:
        return Responses(self.ids + other.ids, self.texts + other.texts, self.truncated + other.truncated)


def left_pad(
    seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into (ids (B, T), attention_mask (B, T)) for batched generation."""
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, t - len(s) :] = torch.tensor(list(s))
            mask[i, t - len(s) :] = 1
    return ids.to(device), mask.to(device)


def on_batch() -> Callable[[int], None] | None:
    """The callback of the innermost :func:`generation_progress`, if any."""
    return _ON_BATCH.get()
