"""Decoding rules: tokens an answer may not write next, given what it has written so far.

:class:`DistinctItems` keeps the items of the explanation's lists distinct, as every teacher writes them:
the salient ``words:`` (none of the 4,956 word lists of the SmolLM2 run's AV-SFT teacher text repeats a
word) and the quoted tokens after ``Next:`` (2 of 4,990 lists repeat one, where two tokens print alike).
Greedy decoding of a trained AV falls into repeating them ("words: japanese, japanese, japanese"; "Next:
" He" 20%, " The" 16%, " He" 12%"), which says less than the lists the AV was taught to write. At the first
token of a list item the rule bans the first token of every item the same list already has; the answer then
writes its next most likely item instead. It reads the answer's text, so it works with any tokenizer; where
a tokenizer merges an item's opening quote into its first token, that list's items are not seen (no ban).

A backend calls :meth:`DistinctItems.start` once per answer and :meth:`RowState.push` with every token the
answer writes; :attr:`RowState.banned` lists the tokens the answer's next step may not write. Answers in any
other format (an official checkpoint's prose) never open such a list, so the rule changes nothing there.

>>> pieces = {1: " words", 2: ":", 3: " japan", 4: ",", 5: " sushi", 6: "."}
>>> rule = DistinctItems(lambda t: pieces[t])
>>> row = rule.start()
>>> for t in (1, 2, 3, 4):
...     row.push(t)
>>> row.banned
[3]
>>> row.push(5); row.push(6); row.banned
[]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_WORDS, _NEXT = "words:", "Next:"
_TAIL = 16  # characters of the answer kept to find a list's opening


@dataclass
class RowState:
    """One answer's position in the explanation's lists."""

    piece: Callable[[int], str]
    tail: str = ""
    open_list: str | None = None  # "words", "next" or None (outside a list)
    in_quote: bool = False  # inside a quoted item of the Next list
    at_item_start: bool = False  # the next non-space token starts an item
    items: list[int] = field(default_factory=list)  # first token of each item of the open list

    @property
    def banned(self) -> list[int]:
        return list(self.items) if self.at_item_start else []

    def push(self, token: int) -> None:
        s = self.piece(token)
        if self.at_item_start and s.strip():
            self.items.append(token)
            self.at_item_start = False
        self.tail = (self.tail + s)[-_TAIL:]
        if self.tail.endswith(_WORDS):
            self._open("words", at_start=True)
        elif self.tail.endswith(_NEXT):
            self._open("next", at_start=False)
        elif self.open_list == "words":
            if any(c in s for c in ".;\n"):
                self.open_list, self.at_item_start = None, False
            elif s.rstrip().endswith(","):
                self.at_item_start = True
        elif self.open_list == "next":
            self._next_list(s)

    def _open(self, name: str, *, at_start: bool) -> None:
        self.open_list, self.items, self.in_quote, self.at_item_start = name, [], False, at_start

    def _next_list(self, s: str) -> None:
        quotes = s.count('"')
        if not self.in_quote and quotes == 0 and any(c in s for c in ".\n"):
            self.open_list, self.at_item_start = None, False  # the list's final full stop
            return
        if quotes % 2:
            self.in_quote = not self.in_quote
            # an item starts right after an opening quote that ends the token (its content not merged into it)
            self.at_item_start = self.in_quote and quotes == 1 and s.rstrip(" ").endswith('"')


class DistinctItems:
    """The rule, for one tokenizer (``piece(token_id) -> text``, cached)."""

    def __init__(self, piece: Callable[[int], str]) -> None:
        self._piece = piece
        self._cache: dict[int, str] = {}

    @classmethod
    def for_tokenizer(cls, tokenizer: Any) -> DistinctItems:
        return cls(lambda t: tokenizer.decode([t], skip_special_tokens=False))

    def piece(self, token: int) -> str:
        s = self._cache.get(token)
        if s is None:
            s = self._cache[token] = self._piece(token)
        return s

    def start(self) -> RowState:
        return RowState(self.piece)


__all__ = ["DistinctItems", "RowState"]
