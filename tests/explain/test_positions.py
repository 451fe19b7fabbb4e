from __future__ import annotations

import pytest

from nla.common.errors import NLAError
from nla.explain.positions import content_spans, overlap_mask, parse_positions


def test_keywords_indices_and_ranges() -> None:
    assert parse_positions("all", 4) == [0, 1, 2, 3]
    assert parse_positions("last", 4) == [3]
    assert parse_positions("3,5,-1", 10) == [3, 5, 9]
    assert parse_positions("10:13", 20) == [10, 11, 12]
    assert parse_positions("-3:", 10) == [7, 8, 9]
    assert parse_positions(":2", 10) == [0, 1]
    assert parse_positions(" 1, 1 ,last,0:2 ", 5) == [0, 1, 4]  # sorted, unique, whitespace ok
    assert parse_positions([0, -1], 3) == [0, 2]


@pytest.mark.parametrize("spec", ["10", "-11", "3,99"])
def test_out_of_range_names_valid_range(spec: str) -> None:
    with pytest.raises(NLAError, match=r"-10\.\.9"):
        parse_positions(spec, 10)


@pytest.mark.parametrize("spec", ["", "first", "1:2:3", "a:b", "5:2", "0:30", "1.5", ","])
def test_bad_specs(spec: str) -> None:
    with pytest.raises(NLAError):
        parse_positions(spec, 10)


def test_assistant_needs_chat_and_uses_mask() -> None:
    with pytest.raises(NLAError, match="chat"):
        parse_positions("assistant", 4)
    mask = [False, True, True, False]
    assert parse_positions("assistant", 4, assistant_mask=mask) == [1, 2]
    assert parse_positions("assistant,last", 4, assistant_mask=mask) == [1, 2, 3]
    with pytest.raises(NLAError, match="no assistant"):
        parse_positions("assistant", 2, assistant_mask=[False, False])


def test_content_spans_follow_turn_order() -> None:
    msgs = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "ok then"},
    ]
    rendered = "<u>hi</u><a>hi</a><u>again</u><a>ok then</a>"
    spans = content_spans(rendered, msgs)
    assert [rendered[s:e] for s, e in spans] == ["hi", "ok then"]
    assert spans[0][0] == rendered.index("<a>") + 3  # the assistant "hi", not the user's


def test_overlap_mask() -> None:
    offsets = [(0, 3), (3, 5), (5, 5), (5, 9), (9, 12)]
    assert overlap_mask(offsets, [(4, 9)]) == [False, True, False, True, False]


def test_assistant_tokens_with_real_template() -> None:
    from helpers import tiny_tokenizer

    tok = tiny_tokenizer()
    msgs = [{"role": "user", "content": "what is two plus two?"}, {"role": "assistant", "content": "four."}]
    rendered = tok.apply_chat_template(msgs, tokenize=False)
    enc = tok(rendered, add_special_tokens=False, return_offsets_mapping=True)
    mask = overlap_mask(enc["offset_mapping"], content_spans(rendered, msgs))
    picked = "".join(rendered[a:b] for (a, b), m in zip(enc["offset_mapping"], mask, strict=True) if m)
    assert picked == "four."
