from __future__ import annotations

from nla.core.text import cjk_fraction, extract_explanation, keep_supported, text_for_ar, topic_claims, wrap_explanation


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


def _answer(topic_line: str) -> str:
    return wrap_explanation(f'Final token: ".", a period.\n{topic_line} Language: English.\nSetting: prose.')


def test_topic_claims_reads_the_rich_topic_line() -> None:
    assert topic_claims(_answer("Topic: sports; words: Team, team, goal.")) == ("sports", ["team", "goal"])
    assert topic_claims(_answer("Topic: unclear.")) == ("unclear", [])
    assert topic_claims("Final token: x") is None


def test_keep_supported_drops_claims_one_answer_makes() -> None:
    group = [
        _answer("Topic: food and cooking; words: apples, apples, apples."),  # greedy repetition, once in 4
        _answer("Topic: unclear; words: shells, apples."),
        _answer("Topic: travel; words: beach, shells."),
        _answer("Topic: travel; words: sand."),
    ]
    kept = keep_supported(group)
    assert [topic_claims(t) for t in kept] == [
        ("unclear", ["apples"]),
        ("unclear", ["shells", "apples"]),
        ("travel", ["shells"]),
        ("travel", []),
    ]
    assert kept[3] == _answer("Topic: travel.")  # no words left: the teacher's form without them
    assert kept[0].startswith('<explanation>Final token: ".", a period.\n') and kept[0].endswith(
        "Setting: prose.</explanation>"
    )
    assert keep_supported(group, min_support=1)[0] == _answer("Topic: food and cooking; words: apples.")


def test_keep_supported_leaves_answers_without_a_topic_line() -> None:
    group = [
        "<explanation>cooking pasta</explanation>",
        _answer("Topic: sports; words: goal."),
        _answer("Topic: sports."),
    ]
    kept = keep_supported(group)
    assert kept[0] == group[0]
    assert topic_claims(kept[1]) == ("sports", []) and topic_claims(kept[2]) == ("sports", [])
