from __future__ import annotations

from nla.core.text import cjk_fraction, extract_explanation, text_for_ar, wrap_explanation


def test_extraction_is_strict() -> None:
    assert extract_explanation("x <explanation> a b </explanation> y") == "a b"
    assert extract_explanation("<explanation>no closing tag") is None
    assert extract_explanation("<explanation>  </explanation>") is None
    assert wrap_explanation(" hi ") == "<explanation>hi</explanation>"


def test_text_for_ar_scores_format_failures_on_their_raw_text() -> None:
    assert text_for_ar("<explanation>cooking pasta</explanation>") == "cooking pasta"
    assert text_for_ar("<explanation>cut off at the cap") == "cut off at the cap"
    assert text_for_ar("no tags at all") == "no tags at all"


def test_cjk_fraction() -> None:
    assert cjk_fraction("") == 0.0
    assert cjk_fraction("ab") == 0.0
    assert cjk_fraction("中文ab") == 0.5
