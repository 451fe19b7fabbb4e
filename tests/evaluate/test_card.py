"""The evaluation card's helpers: stage specs, example choice, text rendering, the shipped card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import nla.models.target
from nla.cli import main
from nla.common.errors import NLAError
from nla.core.text import quote_grounding
from nla.evaluate.card import (
    earlier_stages,
    format_card,
    parse_stages,
    read_card,
    shipped_card,
    split_earlier,
    spread_rows,
)
from nla.evaluate.roundtrip import grounding


def test_parse_stages() -> None:
    assert parse_stages(["shipped=a/av,a/ar", "x=b,c"]) == [("shipped", "a/av", "a/ar"), ("x", "b", "c")]
    for bad in ("noequals", "n=onlyav", "=a,b", "n=a,b,c"):
        with pytest.raises(NLAError, match="NAME=AV_DIR,AR_DIR"):
            parse_stages([bad])


def test_spread_rows_prefers_distinct_documents() -> None:
    docs = ["a"] * 5 + ["b"] * 5 + ["c"] * 5 + ["d"] * 5
    assert spread_rows(docs, 4) == [0, 5, 10, 15]
    assert spread_rows(docs, 2) == [0, 10]
    assert len(spread_rows(docs, 8)) == 8  # fewer documents than wanted: any rows, spread out
    assert spread_rows(docs, 0) == [] and spread_rows([], 3) == []


def _card() -> dict:
    stage = {
        "fve_nrm": 0.25,
        "fve_shuffled": -0.4,
        "fve_empty": -0.2,
        "retrieval_top1_at_8": 0.5,
        "tag_failure_rate": 0.1,
        "truncation_rate": 0.05,
        "len_mean": 90.0,
        "quote_grounding": 0.375,
    }
    return {
        "rows": 8,
        "baseline": 0.6,
        "baseline_source": "train",
        "ar_sft_teacher": dict(stage, fve_nrm=0.5),
        "shipped": stage,
        "ladder": {"ar_sft_teacher": 0.5, "shipped": 0.25, "each_beats_the_one_before": False},
        "controls": {"fve_shuffled": -0.4, "fve_random": -2.4},
        "examples": [
            {"row": 0, "doc_id": "d", "context_tail": "The cat sat", "shipped": "<explanation>cats</explanation>"}
        ],
        "compute": {"rl": "45 steps, 64 min, 1 CPU thread"},
    }


def test_format_card_shows_every_stage_example_and_compute() -> None:
    text = format_card(_card())
    assert "AR-SFT reading teacher text" in text and "+0.500" in text
    assert "shipped" in text and "+0.250" in text and "-0.400" in text
    assert "shipped: cats" in text and "45 steps" in text and "random -2.400" in text
    assert "quotes-in-ctx" in text and "0.38" in text


def test_earlier_card_rows_are_kept_only_from_the_same_heldout_rows(tmp_path: Path) -> None:
    old = _card()
    new = {"rows": 8, "baseline": 0.6, "heldout_fingerprint": "abc", "token_lookup": {"fve_token_lookup": 0.3}}
    with pytest.raises(NLAError, match="no fingerprint, and no token-lookup"):
        earlier_stages(old, new, "old.json")
    old["token_lookup"] = {"fve_token_lookup": 0.3}  # a card older than the fingerprint: the lookup decides
    kept = earlier_stages(old, new, "old.json")
    assert kept["source"] == "old.json"
    assert kept["stages"] == {"ar_sft_teacher": old["ar_sft_teacher"], "shipped": old["shipped"]}
    for change, why in (
        ({"rows": 16}, "16 rows"),
        ({"baseline": 0.61}, "baseline B"),
        ({"token_lookup": {"fve_token_lookup": 0.31}}, "other held-out rows"),
        ({"heldout_fingerprint": "abd"}, "fingerprint differs"),
    ):
        with pytest.raises(NLAError, match=why):
            earlier_stages({**old, **change}, new, "old.json")
    new["earlier"] = kept
    text = format_card(new | {"ladder": {}}, examples=False)
    assert "earlier NLAs, same held-out rows (kept from old.json)" in text
    assert "  AR-SFT reading teacher text" in text and "+0.500" in text and "  shipped" in text
    (tmp_path / "bad.json").write_text('{"rows": 8}')
    with pytest.raises(NLAError, match="not an evaluation card"):
        read_card(str(tmp_path / "bad.json"))
    with pytest.raises(NLAError, match="cannot read --earlier"):
        read_card(str(tmp_path / "missing.json"))


def test_earlier_rows_chain_through_cards_and_take_a_label(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A card made with --earlier passes its kept rows on: the third card shows all three NLAs."""
    first = _card() | {"heldout_fingerprint": "abc"}
    second = _card() | {"heldout_fingerprint": "abc", "earlier": earlier_stages(first, first, "one.json", label="r1")}
    third = earlier_stages(second, first, "two.json", label="r2")
    assert list(third["stages"]) == ["r1 ar_sft_teacher", "r1 shipped", "r2 ar_sft_teacher", "r2 shipped"]
    assert third["sources"] == ["one.json", "two.json"]
    text = format_card(first | {"ladder": {}, "earlier": third}, examples=False)
    assert "kept from one.json, two.json" in text and "  r2 shipped" in text
    assert split_earlier("round4=cards/c.json") == ("round4", "cards/c.json")
    assert split_earlier("cards/a=b.json") == ("", "cards/a=b.json")
    monkeypatch.chdir(tmp_path)
    assert split_earlier("x=y.json") == ("x", "y.json")
    Path("x=y.json").write_text("{}")  # a file of that name exists: the whole value is its path
    assert split_earlier("x=y.json") == ("", "x=y.json")
    assert split_earlier("c.json") == ("", "c.json")


def test_quote_grounding_counts_quotes_found_in_the_context() -> None:
    ctx = "<|im_start|>user\nHow do I boil pasta?<|im_end|>\n<|im_start|>assistant\nBring a large pot"
    good = 'Final token: " pot". Next: " of" 94%.\nBefore it: "...[im_start]assistant\\nBring a large"'
    assert quote_grounding(good, ctx) == (2, 2)  # " of" is too short to count
    assert quote_grounding('Before it: "...a small dog", then "pasta?[im_end]"', ctx) == (1, 2)
    assert quote_grounding("no quotes at all", ctx) == (0, 0)
    # a quoted next-token prediction claims what comes next, not what the context holds
    claims = 'Final token: " pot". Next: " with" 3%, " filled" <1%.'
    assert quote_grounding(claims, ctx) == (1, 1)
    assert quote_grounding(claims, ctx, predictions=True) == (1, 3)
    g = grounding(['<explanation>x "large pot"</explanation>', '<explanation>"a cat"</explanation>'], [ctx, ctx])
    assert g == {"quote_grounding": 0.5, "quotes_per_explanation": 1.0}
    assert grounding(["a"], None) == {}


def test_shipped_card_is_printed_by_nla_eval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(nla.models.target, "default_nla_dir", lambda: tmp_path)
    with pytest.raises(NLAError, match="no NLA is shipped"):
        shipped_card()
    assert main(["eval"]) == 2
    (tmp_path / "card.json").write_text(json.dumps(_card()))
    assert main(["eval"]) == 0
    assert "AR-SFT reading teacher text" in capsys.readouterr().out
    assert main(["eval", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shipped"]["fve_nrm"] == 0.25
    # --model: the card of the NLA shipped for another embedded model, found by its name or an alias
    monkeypatch.setattr(nla.models.target, "shipped_nla_dir", lambda name: tmp_path / "nla" / name)
    assert main(["eval", "--model", "gemma3"]) == 2
    assert "no NLA is shipped for gemma3-270m" in capsys.readouterr().err
    (tmp_path / "nla" / "gemma3-270m").mkdir(parents=True)
    (tmp_path / "nla" / "gemma3-270m" / "card.json").write_text(json.dumps({**_card(), "rows": 7}))
    assert main(["eval", "--model", "gemma3-270m", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 7
    assert main(["eval", "--model", "smollm2", "--json"]) == 0  # the default target's alias: default_nla
    assert json.loads(capsys.readouterr().out)["rows"] != 7
    assert main(["eval", "--model", "Qwen/Qwen2.5-0.5B"]) == 2
    assert "NLAs ship only for the embedded models" in capsys.readouterr().err
    assert main(["eval", "--model", "gemma3-270m", "--av", str(tmp_path)]) == 2
    assert "not both" in capsys.readouterr().err
