"""Which positions of a document extraction reads: tokenisation, the per-document position draw, and
length-bucketed batches.

Documents are tokenised like ``nla explain`` does (text with ``tokenizer(text)``, chats with
``apply_chat_template`` in one step) and capped at ``max_tokens``. Positions are drawn in
``[start, n_tokens)`` by an RNG seeded from ``(seed, doc_id)``, so they do not depend on batch size, order
or sharding; for chats ``start`` stops at the first non-system message's content.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nla.common.errors import NLAError
from nla.data.activations import stable_uniform
from nla.data.documents import Document
from nla.models.target import token_ids


@dataclass
class Encoded:
    doc_id: str
    ids: list[int]  # token ids, capped at max_tokens
    start: int  # first eligible position


# ----------------------------------------------------------------------------------------- tokenisation


def _chat_prefix_len(tokenizer: Any, messages: list[dict[str, str]], ids: list[int]) -> int | None:
    """Tokens before the content of the first non-system message (system prompt + turn header)."""
    k = next((i for i, m in enumerate(messages) if m.get("role") != "system"), None)
    if k is None:
        return None
    probe = messages[:k] + [{"role": messages[k]["role"], "content": ""}]
    probe_ids = token_ids(tokenizer.apply_chat_template(probe, tokenize=True))
    n = 0
    for a, b in zip(ids, probe_ids, strict=False):
        if a != b:
            break
        n += 1
    return n


def plain_label(role: str) -> str:
    """The label that opens a ``role`` turn in a plain transcript, e.g. ``User:``."""
    return f"{role.capitalize()}:"


def plain_transcript(messages: Sequence[dict[str, str]]) -> tuple[str, str]:
    """(a chat as plain text, ``Role: content`` blocks apart by blank lines; the text before the first
    non-system message's content, up to its ``Role:`` label): how a chat reaches a base model that has no
    chat template."""
    parts, head = [], None
    for m in messages:
        label = plain_label(str(m.get("role", ""))) + " "
        if head is None and m.get("role") != "system":
            head = "\n\n".join([*parts, label.rstrip()])
        parts.append(label + str(m.get("content", "")))
    text = "\n\n".join(parts)
    return text, text if head is None else head


def encode_document(tokenizer: Any, doc: Document, max_tokens: int, skip: int) -> Encoded:
    """Token ids of ``doc`` (one tokenisation step, capped) and its first eligible position."""
    try:
        return _encode(tokenizer, doc, max_tokens, skip)
    except (TypeError, ValueError, KeyError, UnicodeError) as e:
        raise NLAError(f"cannot tokenise document {doc.doc_id!r}: {type(e).__name__}: {e}") from e


def _encode(tokenizer: Any, doc: Document, max_tokens: int, skip: int) -> Encoded:
    if doc.messages is not None:
        messages = [dict(m) for m in doc.messages]
        if not getattr(tokenizer, "chat_template", None):  # a base model: the chat is read as a plain transcript
            text, head = plain_transcript(messages)
            ids = token_ids(tokenizer(text))
            return Encoded(doc.doc_id, ids[:max_tokens], min(skip, len(token_ids(tokenizer(head)))))
        ids = token_ids(tokenizer.apply_chat_template(messages, tokenize=True))
        prefix = _chat_prefix_len(tokenizer, messages, ids)
        start = skip if prefix is None else min(skip, prefix)
    else:
        ids = token_ids(tokenizer(doc.text or ""))
        start = skip
    return Encoded(doc.doc_id, ids[:max_tokens], start)


def choose_positions(doc_id: str, n_tokens: int, start: int, n: int, seed: int) -> list[int]:
    """Up to ``n`` distinct sorted positions in ``[start, n_tokens)`` from an RNG seeded by (seed, doc_id)."""
    if n_tokens <= start:
        return []
    rng = random.Random(int(stable_uniform("positions", seed, doc_id) * 2**53))
    return sorted(rng.sample(range(start, n_tokens), min(n, n_tokens - start)))


def plan_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped into length-bucketed batches whose padded size stays within ``batch_tokens``."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        longest = lengths[cur[0]] if cur else lengths[i]  # sorted descending: the first is the longest
        if cur and longest * (len(cur) + 1) > batch_tokens:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


# ----------------------------------------------------------------------------------------- one chunk
