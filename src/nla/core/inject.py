"""Activation injection: put a residual-stream vector into an LM's input at a marker token.

The AV prompt contains ``<concept>M</concept>`` where ``M`` is a rare one-token marker character. At
the marker position the token embedding is REPLACED by ``normalize_to(v, scale)`` (``scale=None``: the
raw vector). Everything here works with any HF causal LM because it only hooks stock modules:

- :func:`inject` is the pure tensor operation (differentiable w.r.t. the embeddings).
- :class:`Injector` is a context manager holding a forward hook on ``model.get_input_embeddings()``.
  The hook edits the embedding module's OUTPUT, i.e. after any scaling the module applies internally
  (Gemma multiplies by ``sqrt(d)`` inside its embedding module), so the value that enters block 0 at
  the marker is exactly ``normalize_to(v, scale)``. It finds the marker in the ``input_ids`` the
  module receives, one marker per row, so left padding is handled for free. By default it injects
  only into the FIRST forward after it is armed (the prefill of ``generate``, or one training forward);
  later decode steps of a KV-cached ``generate`` pass through untouched even if the model emits the
  marker token itself.
- ``mode="add"`` instead ADDS the vector to the output of block ``add_layer`` at the marker position.

>>> with Injector(model, marker.token_id, vectors, scale=250.0):      # doctest: +SKIP
...     out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=40)
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nla.common.errors import NLAError
from nla.core.metrics import normalize_to
from nla.core.modules import find_decoder_layers

log = logging.getLogger(__name__)

INJECTION_PLACEHOLDER = "{injection_char}"
# Preferred markers, best first: U+320E is the official Qwen marker; the rest are rare symbols that many
# BPE vocabularies hold as one token. If none fits, :func:`choose_marker` scans the vocabulary.
MARKER_CANDIDATES: tuple[str, ...] = (
    "\u320e", "\u320f", "\u3260", "\u2042", "\u203b", "\u00ac", "\u2020", "\u00a7", "\u00b6", "\u00a4",
    "\u00bf", "\u00d7", "\u2021", "\u25ca", "\u00a6",
)  # fmt: skip


@dataclass(frozen=True)
class Marker:
    """The injection marker: one token, with the fixed tokens around it inside ``<concept>M</concept>``."""

    char: str
    token_id: int
    left_neighbor_id: int
    right_neighbor_id: int

    @classmethod
    def from_tokens(cls, toks: dict) -> Marker:
        """From a sidecar's ``tokens`` block (``injection_char``, ``injection_token_id``,
        ``injection_left_neighbor_id``, ``injection_right_neighbor_id``); KeyError / TypeError / ValueError when
        one is missing or malformed."""
        return cls(
            str(toks["injection_char"]),
            int(toks["injection_token_id"]),
            int(toks["injection_left_neighbor_id"]),
            int(toks["injection_right_neighbor_id"]),
        )


def inject(
    embeds: torch.Tensor,  # (B, T, d)
    positions: torch.Tensor,  # (B,) long: the marker position of each row
    vectors: torch.Tensor,  # (B, d): raw activation vectors (data, no gradient needed)
    scale: float | None,
) -> torch.Tensor:  # (B, T, d)
    """A copy of ``embeds`` with ``embeds[b, positions[b]] = normalize_to(vectors[b], scale)``.

    ``scale=None`` injects the raw vector. All other entries are unchanged, and the gradient flows to
    every embedding except the replaced ones.
    """
    if embeds.dim() != 3 or vectors.dim() != 2 or positions.dim() != 1:
        raise ValueError(
            f"expected embeds (B,T,d), positions (B,), vectors (B,d); got {tuple(embeds.shape)}, "
            f"{tuple(positions.shape)}, {tuple(vectors.shape)}"
        )
    b, _, d = embeds.shape
    if vectors.shape != (b, d) or positions.shape[0] != b:
        raise ValueError(
            f"vectors {tuple(vectors.shape)} / positions {tuple(positions.shape)} "
            f"do not match embeds {tuple(embeds.shape)}"
        )
    value = vectors.detach().float() if scale is None else normalize_to(vectors.detach(), float(scale))
    out = embeds.clone()
    rows = torch.arange(b, device=embeds.device)
    out[rows, positions.to(embeds.device)] = value.to(device=embeds.device, dtype=embeds.dtype)
    return out


# ----------------------------------------------------------------------------------------- markers


def fill_template(template: str, char: str) -> str:
    if INJECTION_PLACEHOLDER not in template:
        raise NLAError(f"the AV template must contain the placeholder {INJECTION_PLACEHOLDER}: {template!r}")
    return template.replace(INJECTION_PLACEHOLDER, char)


def chat_prompt_ids(tokenizer: Any, instruction: str) -> list[int]:
    """The chat template around one user ``instruction``, tokenised in ONE step, generation prompt added."""
    messages = [{"role": "user", "content": instruction}]
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        return [int(i) for i in out["input_ids"]]
    log.warning("tokenizer has no chat template: using the bare instruction as the prompt")
    return [int(i) for i in tokenizer(instruction)["input_ids"]]


def single_token_id(tokenizer: Any, char: str) -> int | None:
    """The token id of ``char`` if it encodes to exactly one token (and decodes back), else None."""
    ids = tokenizer.encode(char, add_special_tokens=False)
    if len(ids) != 1 or tokenizer.decode(ids) != char:
        return None
    return int(ids[0])


def verify_marker(tokenizer: Any, prompt_ids: Sequence[int], marker: Marker) -> int:
    """Check that the marker occurs exactly once in ``prompt_ids`` with its expected neighbours.

    Returns the marker position. Raises :class:`NLAError` when the marker is absent, repeated, split
    into several tokens, or surrounded by other tokens than recorded.
    """
    live = single_token_id(tokenizer, marker.char)
    if live is None:
        n = len(tokenizer.encode(marker.char, add_special_tokens=False))
        raise NLAError(f"marker {marker.char!r} is split into {n} tokens by this tokenizer; it must be one token")
    if live != marker.token_id:
        raise NLAError(f"marker {marker.char!r} is token {live} in this tokenizer, but {marker.token_id} was expected")
    ids = list(prompt_ids)
    where = [i for i, t in enumerate(ids) if t == marker.token_id]
    if len(where) != 1:
        what = "absent from" if not where else f"found {len(where)} times in"
        raise NLAError(
            f"marker {marker.char!r} (token {marker.token_id}) is {what} the prompt; it must occur exactly once"
        )
    p = where[0]
    if p == 0 or p == len(ids) - 1:
        raise NLAError(f"marker {marker.char!r} sits at the edge of the prompt; it needs neighbours on both sides")
    got = (ids[p - 1], ids[p + 1])
    want = (marker.left_neighbor_id, marker.right_neighbor_id)
    if got != want:
        raise NLAError(f"marker {marker.char!r} has neighbour tokens {got} in the prompt, expected {want}")
    return p


def _candidate_chars(tokenizer: Any, extra: Iterable[str]) -> Iterable[str]:
    yield from extra
    yield from MARKER_CANDIDATES
    # Fallback: one-character, non-alphanumeric, non-space tokens of the vocabulary, highest id first
    # (BPE vocabularies add rare merges last).
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for tid in sorted(tokenizer.get_vocab().values(), reverse=True):
        if tid in special:
            continue
        text = tokenizer.decode([tid])
        if len(text) == 1 and unicodedata.category(text)[0] in "PS" and text not in "<>/{}\ufffd":
            yield text


def choose_marker(
    tokenizer: Any,
    template: str,
    *,
    corpus_texts: Iterable[str] | None = None,
    candidates: Sequence[str] = (),
) -> Marker:
    """Pick a marker character for ``template`` (which holds ``{injection_char}``).

    A candidate is accepted when it is one token, absent from ``corpus_texts`` (and from the template
    itself), and occurs exactly once in the chat prompt built from the template. The neighbour ids are
    read from that prompt and become part of the contract (:func:`verify_marker`).
    """
    fill_template(template, "x")  # placeholder check
    texts = list(corpus_texts or [])
    seen: set[str] = set()
    for char in _candidate_chars(tokenizer, candidates):
        if char in seen or char in template:
            continue
        seen.add(char)
        tid = single_token_id(tokenizer, char)
        if tid is None or any(char in t for t in texts):
            continue
        ids = chat_prompt_ids(tokenizer, fill_template(template, char))
        where = [i for i, t in enumerate(ids) if t == tid]
        if len(where) != 1 or where[0] in (0, len(ids) - 1):
            continue
        p = where[0]
        marker = Marker(char=char, token_id=tid, left_neighbor_id=ids[p - 1], right_neighbor_id=ids[p + 1])
        log.debug("marker %r = token %d", char, tid)
        return marker
    raise NLAError("no usable injection marker: no rare one-token character fits this tokenizer and template")


# ----------------------------------------------------------------------------------------- hooks


def marker_positions(input_ids: torch.Tensor, token_id: int) -> torch.Tensor:  # (B, T) -> (B,)
    """The position of the single marker token in each row (NLAError if a row has none or several)."""
    hits = input_ids == token_id  # (B, T)
    counts = hits.sum(-1)
    if not bool((counts == 1).all()):
        bad = int((counts != 1).nonzero()[0, 0])
        raise NLAError(
            f"row {bad} of the batch holds the marker token {token_id} {int(counts[bad])} times; expected once"
        )
    return hits.float().argmax(-1)


class Injector:
    """Context manager that injects ``vectors`` at the marker token of the next forward(s) of ``model``.

    mode ``"replace"`` (default): forward hook on the embedding module replacing the marker's embedding
    (after the module's internal scaling) by ``normalize_to(v, scale)``.
    mode ``"add"``: the embedding hook only locates the marker; a hook on decoder block ``add_layer``
    adds ``normalize_to(v, scale)`` to that block's output at the marker (``scale=None``: the vector
    is rescaled to the norm the residual stream already has there).

    ``once=True`` (default) disarms after the first forward that contains the markers, which is the
    prefill in ``generate``; later forwards (decode steps) are untouched. ``once=False`` injects into
    every forward whose ``input_ids`` have the batch size of ``vectors`` and contain the markers.
    """

    def __init__(
        self,
        model: nn.Module,
        token_id: int,
        vectors: torch.Tensor,  # (B, d)
        scale: float | None,
        *,
        mode: str = "replace",
        add_layer: int = 0,
        layers: nn.ModuleList | None = None,
        once: bool = True,
    ) -> None:
        if mode not in ("replace", "add"):
            raise ValueError(f"mode must be 'replace' or 'add', got {mode!r}")
        self.model, self.token_id, self.vectors, self.scale = model, token_id, vectors, scale
        self.mode, self.add_layer, self.once, self._layers = mode, add_layer, once, layers
        self.calls = 0  # forwards that received an injection
        self._armed = False
        self._positions: torch.Tensor | None = None
        self._handles: list[Any] = []

    def __enter__(self) -> Injector:
        embed = self.model.get_input_embeddings()
        self._handles.append(embed.register_forward_hook(self._embed_hook))
        if self.mode == "add":
            layers = self._layers
            if layers is None:
                layers = find_decoder_layers(self.model)
            self._handles.append(layers[self.add_layer].register_forward_hook(self._block_hook))
        self._armed = True
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._armed = False

    def _embed_hook(self, _mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor | None:
        self._positions = None
        if not self._armed or not args or not torch.is_tensor(args[0]):
            return None
        ids = args[0]  # (B, T)
        if ids.dim() != 2 or ids.shape[0] != self.vectors.shape[0] or not bool((ids == self.token_id).any()):
            return None
        positions = marker_positions(ids, self.token_id)  # (B,)
        if self.once:
            self._armed = False
        self.calls += 1
        if self.mode == "add":
            self._positions = positions
            return None
        return inject(out, positions, self.vectors, self.scale)

    def _block_hook(self, _mod: nn.Module, _args: tuple[Any, ...], out: Any) -> Any:
        if self._positions is None:
            return None
        hidden = out[0] if isinstance(out, tuple) else out  # (B, T, d)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        pos = self._positions.to(hidden.device)
        here = hidden[rows, pos]  # (B, d)
        scale = self.scale if self.scale is not None else here.detach().float().norm(dim=-1, keepdim=True)
        vec = self.vectors.detach().float().to(hidden.device)
        delta = vec * (scale / torch.sqrt((vec * vec).sum(-1, keepdim=True) + 1e-6))  # (B, d)
        new = hidden.clone()
        new[rows, pos] = (here.float() + delta).to(hidden.dtype)
        self._positions = None
        return (new, *out[1:]) if isinstance(out, tuple) else new


__all__ = [
    "INJECTION_PLACEHOLDER",
    "MARKER_CANDIDATES",
    "Injector",
    "Marker",
    "chat_prompt_ids",
    "choose_marker",
    "fill_template",
    "inject",
    "marker_positions",
    "single_token_id",
    "verify_marker",
]
