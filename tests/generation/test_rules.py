"""Decoding rules: DistinctItems reads the explanation's lists from token texts, and the HF backend never
writes a banned token."""

from __future__ import annotations

import torch

from nla.generation.rules import DistinctItems

from helpers import random_av as _av

PIECES = [" words", ":", " j", "apanese", ",", " sushi", ".", " Next", ' "', " He", '"', " 20", "%,", " The", "%."]
TOKEN = {p: i for i, p in enumerate(PIECES)}


def _row(*pieces: str) -> tuple[object, list[list[int]]]:
    """Push ``pieces`` into a fresh row; the banned tokens before each piece."""
    row = DistinctItems(lambda t: PIECES[t]).start()
    bans = []
    for p in pieces:
        bans.append(row.banned)
        row.push(TOKEN[p])
    return row, bans


def test_words_list_bans_the_first_token_of_each_earlier_item() -> None:
    row, bans = _row(" words", ":", " j", "apanese", ",", " sushi", ",")
    assert bans[2] == []  # the first item: nothing to repeat
    assert bans[5] == [TOKEN[" j"]]  # a second item may not start like "japanese"
    assert row.banned == [TOKEN[" j"], TOKEN[" sushi"]]
    row.push(TOKEN[" The"])
    assert row.banned == []  # inside an item: no ban


def test_a_full_stop_closes_the_words_list() -> None:
    row, _ = _row(" words", ":", " sushi", ".", ",")
    assert row.banned == []


def test_next_list_items_are_the_quoted_tokens() -> None:
    row, bans = _row(" Next", ":", ' "', " He", '"', " 20", "%,", ' "', " The", '"', " 20", "%,", ' "')
    assert bans[1:4] == [[], [], []]  # the opening quote itself is never banned
    assert bans[8] == [TOKEN[" He"]]
    assert row.banned == [TOKEN[" He"], TOKEN[" The"]]
    row.push(TOKEN[" sushi"])
    row.push(TOKEN['"'])
    row.push(TOKEN["%."])
    row.push(TOKEN[' "'])
    assert row.banned == []  # the list ended with "%."


def test_answers_in_another_format_are_never_constrained() -> None:
    row, bans = _row(" The", " sushi", ",", " sushi", ",", " He")
    assert all(b == [] for b in bans) and row.banned == []


class _BanOne:
    """A rule banning one token everywhere."""

    def __init__(self, token: int) -> None:
        self.token = token

    def start(self) -> object:
        return type("S", (), {"banned": [self.token], "push": lambda self, t: None})()


def test_hf_backend_never_writes_a_banned_token() -> None:
    av = _av()
    v = torch.randn(4, av.d_model) * 3
    free = av.sample(v, max_new_tokens=10, batch_size=4).ids
    counts = torch.bincount(torch.tensor([t for r in free for t in r]), minlength=len(av.tokenizer))
    top = int(counts.argmax())
    from nla.generation.hf import HFBackend

    class Banning(HFBackend):
        def generate(self, av, request, on_rows=None):  # type: ignore[no-untyped-def]
            from dataclasses import replace

            return super().generate(av, replace(request, rule=_BanOne(top)), on_rows)

    av.backend = Banning()
    banned = av.sample(v, max_new_tokens=10, batch_size=4).ids
    assert all(top not in r for r in banned)
    assert banned != free
