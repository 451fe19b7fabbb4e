"""Which token positions to explain: parse ``--positions`` specs and find assistant tokens in chats.

Spec grammar (comma-separated items, evaluated against a sequence of ``n`` tokens):

- ``all``: every token; ``last``: the final token;
- ``text``: the tokens of the user's own text: all but what the tokenizer or the chat template added
  (a BOS token, role headers, a default system prompt); every token when that is unknown;
- ``assistant``: the tokens inside assistant turns of a chat (see below);
- an integer index ``3`` or ``-1`` (negative counts from the end, as in Python);
- a range ``10:20`` (start inclusive, end exclusive, either side may be omitted or negative: ``-5:``).

Items may be mixed (``0,last,10:12``); the result is sorted and de-duplicated. An index outside
``-n..n-1`` or a range that selects nothing is an :class:`~nla.common.errors.NLAError` naming the valid range.

How assistant tokens are found: the chat is rendered to a string with the tokenizer's chat template
(``apply_chat_template(tokenize=False)``); each assistant message's ``content`` is located in that string,
in order, giving character spans; the rendered string is tokenised with offsets (fast tokenizers), and a
token is an assistant token when its character span overlaps one of those content spans. Template
decorations (role headers, end-of-turn tokens) are therefore not assistant tokens.

>>> parse_positions("0,-1,2:4", 6)
[0, 2, 3, 5]
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from nla.common.errors import NLAError

KEYWORDS = ("all", "last", "text", "assistant")


def _index(text: str, n: int, spec: str) -> int:
    try:
        i = int(text)
    except ValueError as e:
        raise NLAError(
            f"bad --positions item {text!r} in {spec!r}: "
            "expected all, text, last, assistant, an index like -1 or a range like 10:20"
        ) from e
    if not -n <= i < n:
        raise NLAError(f"position {i} is out of range: the input has {n} tokens, valid indices are {-n}..{n - 1}")
    return i % n


def _range(text: str, n: int, spec: str) -> list[int]:
    parts = text.split(":")
    if len(parts) != 2:
        raise NLAError(f"bad --positions range {text!r} in {spec!r}: expected start:end, e.g. 10:20")
    bounds: list[int | None] = []
    for p in parts:
        p = p.strip()
        if not p:
            bounds.append(None)
            continue
        try:
            bounds.append(int(p))
        except ValueError as e:
            raise NLAError(f"bad --positions range {text!r} in {spec!r}: bounds must be integers") from e
    for b in bounds:
        if b is not None and not -n <= b <= n:
            raise NLAError(f"range {text!r} is out of range: the input has {n} tokens, valid bounds are {-n}..{n}")
    picked = list(range(n))[slice(bounds[0], bounds[1])]
    if not picked:
        raise NLAError(f"range {text!r} selects no tokens: the input has {n} tokens (valid indices {-n}..{n - 1})")
    return picked


def parse_positions(
    spec: str | Sequence[int],
    n_tokens: int,
    *,
    assistant_mask: Sequence[bool] | None = None,
    text_mask: Sequence[bool] | None = None,
) -> list[int]:
    """Resolve ``spec`` against ``n_tokens`` tokens into sorted, unique, non-negative indices.

    ``spec`` is a string (grammar in the module docstring) or a sequence of integer indices.
    ``assistant_mask`` (one bool per token) is required by the ``assistant`` keyword; ``text_mask`` marks
    the user's own tokens for ``text`` (all tokens when None).
    """
    if n_tokens <= 0:
        raise NLAError("the input has no tokens to explain")
    if not isinstance(spec, str):
        return sorted({_index(str(int(i)), n_tokens, str(list(spec))) for i in spec}) or _empty(str(spec))
    text = spec.strip().lower()
    if not text:
        raise NLAError("empty --positions: use all, text, last, assistant, indices like 3,5,-1 or ranges like 10:20")
    out: set[int] = set()
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        if item == "all":
            out.update(range(n_tokens))
        elif item == "last":
            out.add(n_tokens - 1)
        elif item == "text":
            if text_mask is not None and len(text_mask) != n_tokens:
                raise NLAError(f"text mask has {len(text_mask)} entries for {n_tokens} tokens")
            out.update(i for i in range(n_tokens) if text_mask is None or text_mask[i])
        elif item == "assistant":
            out.update(assistant_positions(assistant_mask, n_tokens))
        elif ":" in item:
            out.update(_range(item, n_tokens, spec))
        else:
            out.add(_index(item, n_tokens, spec))
    return sorted(out) or _empty(spec)


def check_spec(spec: str) -> str:
    """Check the grammar of a ``--positions`` spec without an input (every item a keyword, an integer or
    a range of integers), so a job can refuse a malformed spec before it creates anything; returns it."""
    text = spec.strip().lower()
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise NLAError("empty --positions: use all, text, last, assistant, indices like 3,5,-1 or ranges like 10:20")
    for item in items:
        if item in KEYWORDS:
            continue
        parts = item.split(":")
        if len(parts) > 2:
            raise NLAError(f"bad --positions range {item!r} in {spec!r}: expected start:end, e.g. 10:20")
        for part in parts:
            if (part.strip() or len(parts) == 1) and not re.fullmatch(r"[+-]?\d+", part.strip()):
                raise NLAError(
                    f"bad --positions item {item!r} in {spec!r}: "
                    "expected all, text, last, assistant, an index like -1 or a range like 10:20"
                )
    return spec


def _empty(spec: str) -> list[int]:
    raise NLAError(f"--positions {spec!r} selects no tokens")


def assistant_positions(mask: Sequence[bool] | None, n_tokens: int) -> list[int]:
    """Indices where ``mask`` is true; an error if there is no mask (plain text) or no assistant token."""
    if mask is None:
        raise NLAError("--positions assistant needs a chat input (messages with an assistant turn), not plain text")
    if len(mask) != n_tokens:
        raise NLAError(f"assistant mask has {len(mask)} entries for {n_tokens} tokens")
    picked = [i for i, m in enumerate(mask) if m]
    if not picked:
        raise NLAError("--positions assistant: the chat has no assistant tokens")
    return picked


def content_spans(
    rendered: str, messages: Sequence[dict[str, str]], role: str | None = "assistant"
) -> list[tuple[int, int]]:
    """Character spans of the ``content`` of each ``role`` message (every message when ``role`` is None)
    inside the rendered chat string.

    Messages are searched in order, each after the end of the previous one, so a repeated content
    string maps to its own turn. A ``role`` content the template changed (so it cannot be found) is an
    error; with ``role=None`` such a message is left out.
    """
    spans: list[tuple[int, int]] = []
    cursor = 0
    for msg in messages:
        content = str(msg.get("content", ""))
        if not content:
            continue
        start = rendered.find(content, cursor)
        if start < 0:
            stripped = content.strip()
            start = rendered.find(stripped, cursor) if stripped else -1
            if start < 0:
                if msg.get("role") == role:
                    raise NLAError(
                        f"cannot locate a {role} message in the rendered chat template (the template rewrites it)"
                    )
                continue
            content = stripped
        end = start + len(content)
        if role is None or msg.get("role") == role:
            spans.append((start, end))
        cursor = end
    return spans


def overlap_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[bool]:
    """For each token character span ``(a, b)``, whether it overlaps any of ``spans`` (empty spans never do)."""
    return [b > a and any(a < e and s < b for s, e in spans) for a, b in offsets]


__all__ = ["KEYWORDS", "assistant_positions", "check_spec", "content_spans", "overlap_mask", "parse_positions"]
