"""Concept sets: the shipped set's size and hygiene, the keyword rule, users' YAML/JSONL files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from nla.common.errors import NLAError
from nla.faithfulness.concepts import keyword_pattern, load_concepts, match_sites, parse_concepts


def test_shipped_set_has_ten_concepts_of_24_prompts_with_keywords() -> None:
    cs = load_concepts(splits=["covered"])
    assert len(cs.concepts) >= 10 and len(set(cs.names)) == len(cs.names)
    for c in cs.concepts:
        assert len(c.prompts) + len(c.heldout) >= 24, c.name
        assert len(c.heldout) >= 8 and not set(c.prompts) & set(c.heldout), c.name
        assert len(c.keywords) >= 20, c.name
    assert len(cs.neutral) >= 24 and len(cs.neutral_heldout) >= 24
    assert not set(cs.neutral) & set(cs.neutral_heldout)


def test_shipped_neutral_prompts_name_no_concept_and_concept_prompts_name_no_other() -> None:
    cs = load_concepts()
    for text in cs.neutral + cs.neutral_heldout:
        assert cs.named(text) == [], text
    for c in cs.concepts:
        for text in c.prompts + c.heldout:
            assert set(cs.named(text)) <= {c.name}, (c.name, text, cs.named(text))


def test_keywords_match_whole_words_phrases_wildcards_and_escaped_newlines() -> None:
    p = keyword_pattern(["cook", "cooking", "de la", "bak*"])
    assert p.search("Cooking pasta") and p.search("the cook.")
    assert not p.search("a cookie") and not p.search("precook")
    assert p.search("près de\tla mer") and not p.search("delay")
    assert p.search("baking bread") and p.search("Bakery")
    cs = load_concepts()
    assert cs.named('Before it: "...user\\nCooking"') == ["cooking"]  # the AV's escaped newline
    assert cs.named(None) == [] and cs.named("") == []
    with pytest.raises(NLAError, match="keyword"):
        keyword_pattern(["", "*"])


def test_match_sites_label_each_part_and_quotes() -> None:
    cooking = load_concepts().subset(["cooking"]).concepts[0]
    text = (
        'Final token: " boil", a word. Next: " the" 49%, " cook" 10%.\nBefore it: "...stir"\nSetting: chat, a recipe.'
    )
    assert match_sites(text, cooking) == [
        ("final token", True),
        ("next", True),
        ("before it", True),
        ("setting", False),
    ]
    assert match_sites("We bake\nthen boil", cooking) == [("line 1", False), ("line 2", False)]


def _concept(name: str, n: int = 6, **kw) -> dict:
    return {"name": name, "keywords": [name], "prompts": [f"{name} text number {i}" for i in range(n)], **kw}


def test_user_yaml_and_jsonl_files(tmp_path: Path) -> None:
    data = {"name": "mine", "concepts": [_concept("exam"), _concept("secret", heldout=["a secret", "the secret"])]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    cs = load_concepts(tmp_path / "c.yaml")
    assert cs.name == "mine" and cs.names == ["exam", "secret"]
    exam, secret = cs.concepts
    assert len(exam.prompts) == 4 and len(exam.heldout) == 2  # last third held out
    assert len(secret.prompts) == 6 and secret.heldout == ("a secret", "the secret")
    assert cs.neutral == load_concepts().neutral  # no neutral prompts given: the shipped ones
    rows = [_concept("exam"), {"name": "neutral", "prompts": [f"plain text {i}" for i in range(9)]}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cs = load_concepts(tmp_path / "c.jsonl")
    assert cs.names == ["exam"] and len(cs.neutral) == 6 and len(cs.neutral_heldout) == 3
    assert cs.subset(n_concepts=1).names == ["exam"]
    with pytest.raises(NLAError, match="unknown concept"):
        cs.subset(["nope"])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"concepts": []}, "defines no concepts"),
        ({"concepts": [_concept("a"), _concept("a")]}, "unique"),
        ({"concepts": [dict(_concept("a"), keywords=[])]}, "no keywords"),
        ({"concepts": [_concept("a", n=3)]}, "at least 4 prompts"),
        ({"concepts": [dict(_concept("a"), colour="red")]}, "unknown field"),
        ({"concepts": [dict(_concept("a"), prompts="one string")]}, "list of strings"),
        ("just text", "expected a mapping"),
    ],
)
def test_bad_concept_files_fail_with_one_clear_error(data, message: str) -> None:
    with pytest.raises(NLAError, match=message):
        parse_concepts(data, "user.yaml")


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(NLAError, match="not found"):
        load_concepts(tmp_path / "missing.yaml")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(NLAError, match="cannot parse"):
        load_concepts(tmp_path / "bad.jsonl")
