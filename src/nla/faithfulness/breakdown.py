"""Breakdowns: the setting of a context (chat / prose / code) and the type of its final token, and
per-group means of any per-row number.

Setting: ``chat`` when the context holds a chat-template turn marker, ``code`` when at least two lines
look like source code, else ``prose``. Final-token type, from the last two token ids: ``special`` (a
special token of the tokenizer), ``whitespace`` (spaces or line breaks), ``digit``, ``punctuation``,
``word start`` (a letter token that starts with a space, or follows whitespace, punctuation or a special
token), ``continuation`` (a letter token glued to a previous letter or digit token).
:func:`balanced_rows` picks held-out rows so that every setting of a file is represented.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

_TURN = re.compile(r"<\|im_start\|>|<\|start_header_id\|>|<start_of_turn>|\[INST\]")
_CODE = re.compile(r"^\s*(?:def|class|import|from|return|function|const|let|var|public|#include)\b|[;{}]\s*$", re.M)
TOKEN_TYPES = ("word start", "continuation", "digit", "punctuation", "whitespace", "special")
SETTINGS = ("chat", "prose", "code")


def setting_of(context: str) -> str:
    if _TURN.search(context):
        return "chat"
    return "code" if len(_CODE.findall(context)) >= 2 else "prose"


def token_type(tokenizer: Any, ids: Sequence[int]) -> str:
    """The type of the last of ``ids`` (see the module docstring); ``ids`` needs at least one id."""
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    last = int(ids[-1])
    if last in specials:
        return "special"
    s = tokenizer.decode([last], clean_up_tokenization_spaces=False)
    if not s.strip():
        return "whitespace"
    first = s.lstrip()[0]
    if first.isdigit():
        return "digit"
    if not (first.isalpha() or first == "_"):
        return "punctuation"
    if s[0].isspace() or len(ids) < 2 or int(ids[-2]) in specials:
        return "word start"
    prev = tokenizer.decode([int(ids[-2])], clean_up_tokenization_spaces=False)
    return "continuation" if prev[-1:].isalnum() else "word start"


def mean(values: Sequence[float | None]) -> float | None:
    """Mean of the finite values; None when there are none (a rate over nothing is n/a, not 0)."""
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(kept) / len(kept) if kept else None


def by_group(groups: Sequence[str], values: Sequence[float | None]) -> dict[str, dict[str, Any]]:
    """``{group: {"n": rows, "value": mean}}`` in first-seen order of the groups (rows with None skipped
    in the mean, counted in n)."""
    out: dict[str, dict[str, Any]] = {}
    for g in dict.fromkeys(groups):
        vals = [v for gg, v in zip(groups, values, strict=True) if gg == g]
        out[g] = {"n": len(vals), "value": mean(vals)}
    return out


def balanced_rows(groups: Sequence[str], n: int, *, min_each: int = 4) -> list[int]:
    """``n`` row indices (sorted) spread evenly within each group, each group in proportion to its size but
    with at least ``min_each`` rows (or all it has): a file ordered chat-first still gives every setting."""
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    n = min(n, len(groups))
    if n <= 0:
        return []
    each = min(min_each, max(1, n // len(members)))  # the floors must fit into n
    floor = {g: min(each, len(m)) for g, m in members.items()}
    take = {g: min(len(m), max(floor[g], round(n * len(m) / len(groups)))) for g, m in members.items()}
    while sum(take.values()) > n:  # trim the largest groups, above their floor while any is
        above = [g for g in take if take[g] > floor[g]] or [g for g in take if take[g] > 0]
        take[max(above, key=lambda g: take[g])] -= 1
    while sum(take.values()) < n:  # fill from the groups with rows to spare, largest first
        g = max((g for g in take if take[g] < len(members[g])), key=lambda g: len(members[g]) - take[g])
        take[g] += 1
    return sorted(m[int(j * len(m) / take[g])] for g, m in members.items() for j in range(take[g]))


__all__ = ["SETTINGS", "TOKEN_TYPES", "balanced_rows", "by_group", "mean", "setting_of", "token_type"]
