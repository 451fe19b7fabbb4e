"""Concept directions from labelled prompts, validated by a held-out linear probe.

For each prompt the target runs to layer L; the prompt's activation is the MEAN over its tokens except
position 0 (``pool="mean"``, the default) or its LAST token (``pool="last"``). Position 0 is never used:
its activation is an attention sink, about 100 times the usual norm. A concept's direction is the mean
activation of its ``prompts`` minus the mean of the neutral ``prompts`` (raw units). The direction is the
probe: held-out prompts are scored by their projection on it, and the AUC of on-topic against neutral
held-out prompts says whether it separates text it never saw (the report skips directions below 0.9).

Texts are rendered as plain prose or, for ``setting="chat"``, as the user turn of a chat (the target's
chat template, cut right after the prompt), so planted bases and topic-recall texts come in both settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nla.common.errors import NLAError
from nla.models.target import Target

POOLS = ("mean", "last")


@dataclass
class Context:
    """A text as the target reads it: the string, its token ids, and the setting it was rendered in."""

    text: str
    ids: list[int]
    setting: str  # "prose" or "chat"


def render(tokenizer: object, prompt: str, setting: str = "prose") -> Context:
    """``prompt`` as prose (``tokenizer(text)``, like extraction) or as a chat's user turn that ends right
    after the prompt (tokenised in one step, special tokens parsed)."""
    if setting == "prose":
        return Context(prompt, [int(i) for i in tokenizer(prompt)["input_ids"]], "prose")  # type: ignore[operator]
    if setting != "chat":
        raise NLAError(f"unknown setting {setting!r}: expected prose or chat")
    if not getattr(tokenizer, "chat_template", None):
        return render(tokenizer, prompt, "prose")
    full = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False)  # type: ignore[attr-defined]
    cut = full.rfind(prompt)
    if cut < 0:
        raise NLAError("the chat template rewrote the prompt; cannot cut the chat after it")
    text = full[: cut + len(prompt)]
    return Context(text, [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]], "chat")  # type: ignore[operator]


@torch.no_grad()
def activations(
    target: Target, layer: int, contexts: list[Context], *, pool: str = "mean", batch_size: int = 16
) -> torch.Tensor:  # -> (N, d) float32
    """One layer-``layer`` vector per context: mean over positions 1..T-1, or the last token."""
    if pool not in POOLS:
        raise NLAError(f"unknown pooling {pool!r}: expected one of {', '.join(POOLS)}")
    out = []
    pad = int(getattr(target.tokenizer, "pad_token_id", None) or 0)
    for start in range(0, len(contexts), batch_size):
        chunk = contexts[start : start + batch_size]
        lengths = [len(c.ids) for c in chunk]
        if min(lengths) < 2:
            raise NLAError("every prompt needs at least 2 tokens (position 0 is never used)")
        ids = torch.full((len(chunk), max(lengths)), pad, dtype=torch.long)  # (B, T), right padding
        mask = torch.zeros_like(ids)
        for b, c in enumerate(chunk):
            ids[b, : len(c.ids)] = torch.tensor(c.ids)
            mask[b, : len(c.ids)] = 1
        hidden = target.hidden_at(ids.to(target.device), mask.to(target.device), layer).float().cpu()  # (B, T, d)
        for b, n in enumerate(lengths):
            out.append(hidden[b, 1:n].mean(0) if pool == "mean" else hidden[b, n - 1])
    return torch.stack(out) if out else torch.zeros(0, target.d_model)


def auc(pos: torch.Tensor, neg: torch.Tensor) -> float:  # (P,), (N,)
    """Probability that a random positive scores above a random negative (ties count half)."""
    if pos.numel() == 0 or neg.numel() == 0:
        return float("nan")
    diff = pos.float()[:, None] - neg.float()[None, :]  # (P, N)
    return float((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean())


@dataclass
class Direction:
    concept: str
    vector: torch.Tensor  # (d,) raw: mean(on-topic) - mean(neutral)
    auc: float  # held-out probe AUC of the projection on ``vector``
    valid: bool  # auc >= the threshold: planted and reported; else reported and skipped

    @property
    def unit(self) -> torch.Tensor:  # (d,)
        return self.vector / self.vector.norm().clamp_min(1e-12)


def build_directions(
    on_topic: dict[str, tuple[torch.Tensor, torch.Tensor]],  # name -> (train (n, d), held-out (m, d))
    neutral: tuple[torch.Tensor, torch.Tensor],  # (train (n0, d), held-out (m0, d))
    *,
    min_auc: float = 0.9,
) -> list[Direction]:
    """Difference-of-means directions and their held-out probe AUC (see the module docstring)."""
    base = neutral[0].mean(0)  # (d,)
    out = []
    for name, (train, held) in on_topic.items():
        vec = train.mean(0) - base  # (d,)
        u = vec / vec.norm().clamp_min(1e-12)
        score = auc(held @ u, neutral[1] @ u)
        out.append(Direction(name, vec, score, bool(score >= min_auc)))
    return out


def plant(bases: torch.Tensor, direction: torch.Tensor, alpha: float) -> torch.Tensor:  # (N, d), (d,) -> (N, d)
    """``v + alpha * |v| * unit(direction)`` for each base vector ``v``."""
    u = direction.float() / direction.float().norm().clamp_min(1e-12)
    return bases.float() + alpha * bases.float().norm(dim=-1, keepdim=True) * u


__all__ = ["POOLS", "Context", "Direction", "activations", "auc", "build_directions", "plant", "render"]
