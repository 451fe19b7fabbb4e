"""Perturbations of an explanation (pure text, seeded): what part of the text carries the round-trip score.

Each function maps one explanation to a variant; :data:`PERTURBATIONS` lists them in report order. The
suite scores every variant with the AR and reports ``fve(variant) - fve(as written)`` (NLA.md §5.5; the
published anchors on a 7B NLA: 0.775 as written, 0.738 paraphrased, 0.507 quotes only, -0.09 prose only).
A "sentence" is a line, or a piece of a line after ``.``/``!``/``?`` and a space outside double quotes.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

_QUOTED = re.compile(r'"[^"\n]*"')


def as_written(text: str, rng: random.Random) -> str:
    return text


def quotes_deleted(text: str, rng: random.Random) -> str:
    """Every double-quoted span removed, quote marks included (the prose around them is kept)."""
    lines = re.sub(r"[ \t]{2,}", " ", _QUOTED.sub("", text)).split("\n")
    return "\n".join(line.strip() for line in lines).strip()


def quotes_only(text: str, rng: random.Random) -> str:
    """Only the double-quoted spans, with their quote marks, one per line; empty if nothing is quoted."""
    return "\n".join(m.group(0) for m in _QUOTED.finditer(text))


def first_line(text: str, rng: random.Random) -> str:
    return text.strip().split("\n", 1)[0].strip()


def sentences(text: str) -> list[str]:
    """Lines, split further after sentence punctuation followed by a space, never inside a quoted span."""
    out = []
    for line in text.strip().split("\n"):
        start, in_quote = 0, False
        for i, ch in enumerate(line):
            if ch == '"':
                in_quote = not in_quote
            elif ch in ".!?" and not in_quote and i + 1 < len(line) and line[i + 1] == " ":
                out.append(line[start : i + 1].strip())
                start = i + 1
        if line[start:].strip():
            out.append(line[start:].strip())
    return [s for s in out if s]


def sentences_shuffled(text: str, rng: random.Random) -> str:
    """The sentences in a new order (a different one whenever there are at least two), one per line."""
    parts = sentences(text)
    if len(parts) < 2:
        return "\n".join(parts)
    order = list(range(len(parts)))
    while order == sorted(order):
        rng.shuffle(order)
    return "\n".join(parts[i] for i in order)


def words_dropped(text: str, rng: random.Random, share: float = 0.3) -> str:
    """``round(share * n)`` of the ``n`` whitespace-separated words removed at random (line breaks kept)."""
    lines = [line.split() for line in text.strip().split("\n")]
    slots = [(i, j) for i, words in enumerate(lines) for j in range(len(words))]
    drop = set(rng.sample(slots, round(share * len(slots)))) if slots else set()
    kept = [" ".join(w for j, w in enumerate(words) if (i, j) not in drop) for i, words in enumerate(lines)]
    return "\n".join(line for line in kept if line)


PERTURBATIONS: dict[str, Callable[[str, random.Random], str]] = {
    "as written": as_written,
    "quotes deleted": quotes_deleted,
    "quotes only": quotes_only,
    "first line only": first_line,
    "sentences shuffled": sentences_shuffled,
    "30% words dropped": words_dropped,
}


def perturbed(texts: list[str], name: str, *, seed: int = 0) -> list[str]:
    """One variant per text; row ``i`` uses its own generator seeded by ``(seed, i)``."""
    fn = PERTURBATIONS[name]
    return [fn(t, random.Random(f"{seed}:{i}")) for i, t in enumerate(texts)]


__all__ = ["PERTURBATIONS", "perturbed", "sentences"]
