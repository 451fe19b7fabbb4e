"""The novel-concept split and the per-split rates: the split shares nothing with any training resource, the
wrong-concept and false-positive rates count what they say, intervals are Wilson's, few bases say "too few"."""

from __future__ import annotations

from pathlib import Path

import pytest

from nla.common.errors import NLAError
from nla.faithfulness.concepts import SPLITS, Concept, ConceptSet, load_concepts
from nla.faithfulness.novelty import TrainingText, overlaps, shared_keywords, training_text
from nla.faithfulness.report import checks, headline, summary_text
from nla.faithfulness.splits import fmt_rate, rate, split_checks, split_stats, too_few, wilson

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_set_has_a_covered_and_a_novel_split_of_at_least_20_concepts() -> None:
    cs = load_concepts()
    by_split = {s: [c for c in cs.concepts if c.split == s] for s in SPLITS}
    assert len(by_split["covered"]) >= 10 and len(by_split["novel"]) >= 20
    assert len(set(cs.names)) == len(cs.names)
    for c in by_split["novel"]:
        assert len(c.prompts) >= 8 and len(c.heldout) >= 5 and len(c.keywords) >= 8, c.name
    assert [c.name for c in load_concepts(splits=["novel"]).concepts] == [c.name for c in by_split["novel"]]
    with pytest.raises(NLAError, match="unknown concept split"):
        load_concepts(splits=["nonsense"])


def test_the_novel_split_shares_no_cue_topic_name_or_prompt_with_any_training_resource() -> None:
    tr = training_text()
    # the check reads every corpus prompt file a training run uses, the supplementary corpora's included
    assert {
        "chat_prompts.txt",
        "prompt_templates.yaml",
        "corpora/topic_prompts.yaml",
        "corpora/scene_prompts.yaml",
        "corpora/lexicon_prompts.yaml",
    } <= set(tr.files)
    assert overlaps(load_concepts(splits=["novel"]), tr) == []
    # and the covered split does share them (that is what "covered" means)
    assert len(overlaps(load_concepts(splits=["covered"]), tr)) > 50


def test_the_overlap_check_can_fail_on_each_kind_of_contact() -> None:
    tr = TrainingText(cues={"food and cooking": ("cook*", "oven")}, files={"p.txt": "How do I tune a violin?\n"})
    prompts = ("a b c", "d e f", "g h i", "j k l")

    def one(name: str, keywords: tuple[str, ...], extra: tuple[str, ...] = ()) -> list[str]:
        c = Concept(name, keywords, prompts + extra, ("m n", "o p"), "novel")
        return overlaps(ConceptSet("t", (c,), (), ()), tr)

    assert one("x", ("cooker",))  # a cue matches the keyword
    assert one("x", ("oven*",))  # the keyword matches a cue
    assert one("x", ("food",))  # a word of a topic name
    assert one("food_and_cooking", ("zzz",))  # the name is a topic
    assert one("x", ("violin",))  # the keyword is in a corpus prompt file
    assert one("x", ("zzz",), ("How do I tune a violin?",))  # a training prompt
    assert one("x", ("zzz", "qqq")) == []


def test_no_keyword_names_two_concepts_and_no_neutral_text_names_a_novel_one() -> None:
    cs = load_concepts()
    assert shared_keywords(cs, cs) == []
    for text in cs.neutral + cs.neutral_heldout:
        assert cs.named(text) == [], text
    for c in cs.concepts:
        for text in c.prompts + c.heldout:
            assert set(cs.named(text)) <= {c.name}, (c.name, text)


def test_wilson_interval_matches_hand_computed_values() -> None:
    lo, hi = wilson(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    assert fmt_rate(rate(3, 4)) == "0.75 (3/4, 95% CI 0.30-0.95)"
    assert too_few(rate(3, 4)) and not too_few(rate(30, 40, bases=5)) and too_few(rate(30, 40, bases=2))


def _planting(named: dict[str, list[list[str]]], base_named: list[list[str]], bases: int) -> dict:
    return {
        "alphas": [0.0, 1.0],
        "planted_bases": bases,
        "base_named": base_named,
        "named": {c: {"1": v} for c, v in named.items()},
    }


def test_split_stats_count_hits_wrong_concepts_false_positives_and_recall() -> None:
    split_of = {"a": "covered", "b": "covered", "x": "novel", "y": "novel"}
    named = {
        "a": [["a"], ["a"], ["a", "x"], []],  # 3 hits, 1 wrong (names x)
        "b": [["b"], ["b"], ["b"], ["b"]],
        "x": [["a"], ["a"], ["x"], []],  # the novel concept read as covered 'a': 1 hit, 2 wrong
        "y": [["y"], [], [], ["b", "y"]],
    }
    base_named = [[], ["x"], [], [], ["a"]]
    topic = {
        "explanations": [
            {"concept": "a", "named": ["a"]},
            {"concept": "x", "named": ["a"]},
            {"concept": "y", "named": ["y", "x"]},
            {"concept": "y", "named": []},
        ]
    }
    st = split_stats(_planting(named, base_named, 4), topic, split_of)
    cov, nov = st["covered"], st["novel"]
    assert (cov["hit_rate"]["1"]["k"], cov["hit_rate"]["1"]["n"]) == (7, 8)
    assert (nov["hit_rate"]["1"]["k"], nov["hit_rate"]["1"]["n"]) == (3, 8)
    assert (cov["wrong_concept_rate"]["1"]["k"], nov["wrong_concept_rate"]["1"]["k"]) == (1, 3)
    assert (cov["false_positive_any"]["k"], cov["false_positive_any"]["n"]) == (1, 5)
    assert (nov["false_positive_pairs"]["k"], nov["false_positive_pairs"]["n"]) == (1, 10)
    assert cov["wrong_concept_rate"]["0"]["k"] == 1  # at alpha 0: bases naming a concept of the split
    assert (nov["topic_recall"]["k"], nov["topic_recall"]["n"]) == (1, 3)
    assert (nov["topic_recall_floor"]["k"], nov["topic_recall_floor"]["n"]) == (1, 3)  # y's text names x
    assert (cov["hit_floor"]["k"], cov["hit_floor"]["n"]) == (1, 10)
    # claims: covered a names [a]x2, [a, x]; b names [b]x4 -> 6 of 7 right alone; novel: [a], [a], [x], [y], [b, y]
    assert (cov["claim_precision"]["1"]["k"], cov["claim_precision"]["1"]["n"]) == (6, 7)
    assert (nov["claim_precision"]["1"]["k"], nov["claim_precision"]["1"]["n"]) == (2, 5)


def test_checks_on_a_handful_of_bases_say_too_few_instead_of_pass() -> None:
    split_of = {"a": "novel"}
    perfect = {"a": [["a"]] * 2}
    st = split_stats(
        _planting(perfect, [[], [], []], 2), {"explanations": [{"concept": "a", "named": ["a"]}]}, split_of
    )
    rows = split_checks(st)
    assert rows and all(r["passed"] is None and r["too_few"] for r in rows)
    assert all("too few" in r["value"] for r in rows if r["value"].split()[0] != "n/a")
    report = {"planting": {"bases": 3, "planted_bases": 2, "hit_rate_mean": {"2": 1.0}, "false_positive_any": 0.0}}
    head = headline(report)
    first = checks(head, st)
    assert first[0]["passed"] is None and first[0]["too_few"] and first[1]["too_few"]
    text = summary_text({**report, "by_split": st, "meta": {"decoding": "greedy"}})
    assert "[too few]" in text and "[pass]" not in text
    # with enough bases the same perfect numbers pass
    many = split_stats(
        _planting({"a": [["a"]] * 30}, [[]] * 30, 30),
        {"explanations": [{"concept": "a", "named": ["a"]}] * 30},
        split_of,
    )
    assert [r["passed"] for r in split_checks(many)] == [True, True, True, True]
