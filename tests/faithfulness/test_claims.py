"""Next-token claims, setting and final-token type, and per-group means."""

from __future__ import annotations

import pytest

from nla.faithfulness.breakdown import by_group, mean, setting_of, token_type
from nla.faithfulness.claims import check_claims, next_token_claims, next_token_tops


def test_claims_are_parsed_from_both_teacher_styles() -> None:
    compact = 'Final token: " pot", a word. Next: " of" 94%, " to" 5%, " with" <1%.\nBefore it: "...large"'
    assert next_token_claims(compact) == [(" of", 94.0), (" to", 5.0), (" with", 0.5)]
    full = 'The model predicts next "\\n" 62%, "." 20%, so the next token most likely is a line break (70%).'
    assert next_token_claims(full) == [("\\n", 62.0), (".", 20.0)]
    assert next_token_claims("no claims") == [] and next_token_claims(None) == []


def test_check_claims_against_the_real_distribution() -> None:
    top = [(" of", 0.90), (" to", 0.06), (" in", 0.01), (" for", 0.01), (" and", 0.01), (" at", 0.005)]
    c = check_claims([(" of", 94.0), (" to", 5.0), (" at", 0.5), (" zebra", 3.0)], top)
    assert c.n_claims == 4 and c.in_top5 == pytest.approx(2 / 4) and c.top1 is True
    assert c.abs_error_pp == pytest.approx((4 + 1 + 0 + 3) / 4)
    c = check_claims([(" to", 50.0), (" to", 1.0)], top)
    assert c.n_claims == 1 and c.in_top5 == 1.0 and c.top1 is False
    none = check_claims([], top)
    assert none.n_claims == 0 and none.in_top5 is None and none.top1 is None and none.abs_error_pp is None


def test_next_token_tops_are_a_distribution_in_display_form(tiny_target) -> None:
    ids = tiny_target.tokenizer("The quick brown fox")["input_ids"]
    (top,) = next_token_tops(tiny_target, [ids], k=10)
    probs = [p for _, p in top]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
    assert all('"' not in t and "\n" not in t for t, _ in top)


def test_setting_of_a_context() -> None:
    assert setting_of("<|im_start|>user\nHow do I boil") == "chat"
    assert setting_of("def f(x):\n    return x\nimport os") == "code"
    assert setting_of("The cat sat on the mat. It was warm.") == "prose"


def test_token_type_of_the_final_token(tiny_target) -> None:
    tok = tiny_target.tokenizer

    def kind(text: str) -> str:
        return token_type(tok, tok(text, add_special_tokens=False)["input_ids"])

    assert kind("The quick b") == "word start"  # " b": a token that starts with a space
    assert kind("The quick brown") == "continuation"  # " b", "row", "n"
    assert kind("The fox.") == "punctuation"
    assert kind("Paris 1234") == "digit"
    assert kind("hello<|im_end|>") == "special"
    assert kind("hello\n") == "whitespace"
    assert kind("(qu") == "word start"  # "(", "qu": a letter token right after punctuation


def test_means_skip_missing_values_and_are_none_over_nothing() -> None:
    assert mean([1.0, None, 3.0, float("nan")]) == 2.0 and mean([]) is None and mean([None]) is None
    g = by_group(["chat", "prose", "chat"], [1.0, 0.0, None])
    assert g == {"chat": {"n": 2, "value": 1.0}, "prose": {"n": 1, "value": 0.0}}


def test_balanced_rows_represent_every_setting_and_spread_within_it() -> None:
    from nla.faithfulness.breakdown import balanced_rows

    groups = ["chat"] * 50 + ["prose"] * 45 + ["code"] * 5
    rows = balanced_rows(groups, 20)
    picked = [groups[i] for i in rows]
    assert len(rows) == 20 == len(set(rows)) and rows == sorted(rows)
    assert picked.count("code") == 4 and picked.count("chat") + picked.count("prose") == 16
    assert rows[0] == 0 and max(i for i in rows if groups[i] == "chat") > 40  # spread, not the first rows
    assert balanced_rows(groups, 500) == list(range(100)) and balanced_rows(groups, 0) == []
    assert len(balanced_rows(["a"] * 3 + ["b"], 2)) == 2
