"""What ``nla explain`` reads: texts and chats tokenised the way extraction does, and vector files.

Plain text is tokenised with ``tokenizer(text)``, chats with ``apply_chat_template`` in one step (a second
BOS would shift positions); :func:`encode_input` also marks which tokens are assistant content and which
are the user's own text (not a BOS token or chat-template decoration). :func:`select_tokens` applies
``--max-tokens`` and ``--positions`` and refuses to explain a position past the model's context window.
:func:`load_vector_file` reads ``.npy`` (never pickles) or ``.safetensors`` directions, and
:func:`as_vectors` validates them against the NLA's ``d_model``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nla.common.errors import NLAError
from nla.explain.positions import content_spans, overlap_mask, parse_positions

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    """A tokenised input: ids, the display text of each token, and which tokens are assistant content."""

    input_ids: list[int]
    tokens: list[str]
    assistant_mask: list[bool] | None = None  # None for plain text (or when offsets are unavailable)
    text_mask: list[bool] | None = None  # True on the user's own text; None when unknown (no offsets)
    dropped: int = 0  # tokens cut from the start of the input by --max-tokens

    def keep_last(self, n: int) -> Encoded:
        """The last ``n`` tokens (everything when there are fewer)."""
        cut = max(0, len(self.input_ids) - n)

        def tail(x: list[bool] | None) -> list[bool] | None:
            return None if x is None else x[cut:]

        return Encoded(
            self.input_ids[cut:],
            self.tokens[cut:],
            tail(self.assistant_mask),
            tail(self.text_mask),
            self.dropped + cut,
        )


# ----------------------------------------------------------------------------- tokenisation


def token_texts(text: str, ids: Sequence[int], offsets: Sequence[tuple[int, int]] | None, tokenizer: Any) -> list[str]:
    """Display text of each token: the slice of ``text`` from the end of the previous token to the end of
    this one (so the pieces concatenate back to the text); decoded ids where offsets say nothing."""
    if offsets is None:
        return [tokenizer.decode([i]) for i in ids]
    out, prev = [], 0
    for tid, (_a, b) in zip(ids, offsets, strict=True):
        if b > prev:
            out.append(text[prev:b])
            prev = b
        else:
            out.append(tokenizer.decode([tid]))
    return out


def _check_messages(messages: Any) -> list[dict[str, str]]:
    if not messages or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
        raise NLAError("a chat must be a non-empty list of {'role': ..., 'content': ...} messages")
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]


def encode_input(tokenizer: Any, text_or_messages: str | Sequence[dict[str, str]] | Any) -> Encoded:
    """Tokenise plain text (``tokenizer(text)``) or a chat (``apply_chat_template`` in one step).

    A :class:`nla.data.corpus.Document` is accepted too. For chats the rendered template is re-tokenised with
    offsets to find the tokens of assistant messages; if that does not reproduce the template's ids,
    token texts are decoded one by one and ``assistant_mask`` is None.
    """
    if hasattr(text_or_messages, "messages") and hasattr(text_or_messages, "text"):  # a Document
        doc = text_or_messages
        text_or_messages = doc.text if doc.text is not None else list(doc.messages)
    fast = bool(getattr(tokenizer, "is_fast", False))
    if isinstance(text_or_messages, str):
        text = text_or_messages
        if not text.strip():
            raise NLAError("the text to explain is empty")
        enc = tokenizer(text, return_offsets_mapping=fast)
        ids = [int(i) for i in enc["input_ids"]]
        offsets = [tuple(o) for o in enc["offset_mapping"]] if fast else None
        text_mask = [b > a for a, b in offsets] if offsets is not None else None  # added tokens span nothing
        return Encoded(ids, token_texts(text, ids, offsets, tokenizer), text_mask=text_mask)
    from nla.models.target import token_ids

    messages = _check_messages(text_or_messages)
    if not getattr(tokenizer, "chat_template", None):
        raise NLAError("the target tokenizer has no chat template: pass plain text instead of messages")
    ids = token_ids(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True))
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    if fast:
        enc = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
        if [int(i) for i in enc["input_ids"]] == ids:
            offsets = [tuple(o) for o in enc["offset_mapping"]]
            mask = overlap_mask(offsets, content_spans(rendered, messages))
            typed = overlap_mask(offsets, content_spans(rendered, messages, role=None))
            return Encoded(ids, token_texts(rendered, ids, offsets, tokenizer), mask, typed)
    log.warning("cannot map chat tokens to characters; assistant positions are unavailable for this input")
    return Encoded(ids, token_texts(rendered, ids, None, tokenizer))


def select_tokens(
    enc: Encoded,
    positions: str | Sequence[int],
    *,
    limit: int | None,
    model: str = "the target model",
    limit_source: str = "",
    max_tokens: int | None = None,
) -> tuple[Encoded, list[int]]:
    """Keep the last ``max_tokens`` tokens (when given), resolve ``positions`` against what is kept, and
    refuse any position at or past the model's context ``limit``: a model never sees more than ``limit``
    tokens, and an activation at position p depends only on tokens 0..p, so a window before the limit of
    a longer text is fine. Returns the (possibly cut) input and the positions."""
    if max_tokens is not None:
        if max_tokens < 1:
            raise NLAError(f"--max-tokens must be >= 1, got {max_tokens}")
        if limit is not None and max_tokens > limit:
            raise NLAError(f"--max-tokens {max_tokens:,} is more than {model} reads: at most {limit:,} tokens")
        enc = enc.keep_last(max_tokens)
    picked = parse_positions(positions, len(enc.input_ids), assistant_mask=enc.assistant_mask, text_mask=enc.text_mask)
    if limit is not None and picked[-1] >= limit:
        where = f" ({limit_source})" if limit_source else ""
        raise NLAError(
            f"the input has {len(enc.input_ids):,} tokens but {model} reads at most {limit:,}{where}, so position "
            f"{picked[-1]:,} is past its context window: pass --max-tokens {limit} to explain only the last "
            f"{limit:,} tokens, or --positions to explain a window before token {limit:,} (e.g. --positions 0:{limit})"
        )
    return enc, picked


def as_vectors(array: Any, d_model: int) -> torch.Tensor:  # (N, d) or (d,) -> (N, d) float32
    """Validate arbitrary directions: 1-D or 2-D, width ``d_model``, finite, non-zero rows."""
    import numpy as np
    import torch

    if isinstance(array, np.ndarray):
        if not np.issubdtype(array.dtype, np.number):
            raise NLAError(f"vectors must be numeric, got dtype {array.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    elif torch.is_tensor(array):
        t = array.detach().float().cpu()
    else:
        try:
            t = torch.tensor(array, dtype=torch.float32)
        except (TypeError, ValueError) as e:
            raise NLAError(f"cannot read vectors from {type(array).__name__}: {e}") from e
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2 or t.shape[0] == 0:
        raise NLAError(f"vectors must be a 1-D (d,) or 2-D (N, d) array, got shape {tuple(t.shape)}")
    if t.shape[1] != d_model:
        raise NLAError(f"vectors have width {t.shape[1]} but this NLA's d_model is {d_model}")
    bad = ~torch.isfinite(t).all(-1)
    if bool(bad.any()):
        raise NLAError(f"vector {int(bad.nonzero()[0, 0])} contains NaN or inf")
    zero = t.norm(dim=-1) == 0
    if bool(zero.any()):
        raise NLAError(f"vector {int(zero.nonzero()[0, 0])} is all zeros: a zero vector has no direction to explain")
    return t


def load_vector_file(path: str | os.PathLike[str], key: str | None = None) -> Any:  # -> np.ndarray (N, d) or (d,)
    """Read directions from ``.npy`` (numpy, ``allow_pickle=False``) or ``.safetensors`` (tensor ``key``;
    optional when the file holds exactly one tensor)."""
    p = Path(path)
    if not p.is_file():
        raise NLAError(f"no such vector file: {p}")
    import numpy as np

    suffix = p.suffix.lower()
    if suffix == ".npy":
        if key is not None:
            raise NLAError("--key applies to .safetensors files only")
        try:
            return np.load(p, allow_pickle=False)
        except ValueError as e:
            raise NLAError(f"cannot read {p} as a plain numeric .npy array: {e}") from e
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(p))
        except (SafetensorError, OSError) as e:
            raise NLAError(f"cannot read {p} as safetensors: {e}") from e
        if key is None:
            if len(tensors) != 1:
                raise NLAError(
                    f"{p} holds {len(tensors)} tensors; choose one with --key ({', '.join(sorted(tensors))})"
                )
            key = next(iter(tensors))
        if key not in tensors:
            raise NLAError(f"{p} has no tensor {key!r}; it holds {', '.join(sorted(tensors))}")
        return tensors[key].float().numpy()
    raise NLAError(f"unsupported vector file {p.name}: use .npy or .safetensors")
