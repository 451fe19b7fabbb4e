"""Held-out rows with verbalizers and readers whose truth is known: perturbations, claims, grounding, lookup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nla.data.activations import VectorSet
from nla.faithfulness.claims import next_token_tops
from nla.faithfulness.heldout import heldout_rows
from nla.faithfulness.page import write_report
from nla.faithfulness.report import checks, headline, summary_text

CONTEXTS = [
    "The quick brown fox jumps over the lazy dog",
    "<|im_start|>user\nwhat is two plus two?<|im_end|>\n<|im_start|>assistant\nfour",
    "def add(a, b):\n    return a + b\nimport os",
    "Paris is the capital of France. Berlin is the capital of",
]


def rows(d: int) -> VectorSet:
    v = torch.randn(len(CONTEXTS), d, generator=torch.Generator().manual_seed(0))
    teacher = [f'Final token: a word.\nBefore it: "row{i}"' for i in range(len(CONTEXTS))]
    return VectorSet(v, [f"doc{i}" for i in range(len(CONTEXTS))], list(CONTEXTS), teacher)


def by_vector(vs: VectorSet, answer) -> callable:
    """An explainer that knows which row each vector is (so its answers can be exactly right)."""
    index = {tuple(v.tolist()): i for i, v in enumerate(vs.vectors)}
    return lambda vectors: [answer(index[tuple(v.tolist())]) for v in vectors]


def quoted_reader(vs: VectorSet):
    """An AR that rebuilds row i exactly when the text holds the quote "row{i}", else a constant vector."""
    const = torch.ones(vs.vectors.shape[1])

    def read(texts: list[str]) -> torch.Tensor:
        out = []
        for t in texts:
            hit = [i for i in range(len(CONTEXTS)) if f'"row{i}"' in t]
            out.append(vs.vectors[hit[0]] if hit else const)
        return torch.stack(out)

    return read


def test_perturbations_follow_what_the_reader_uses(tiny_target) -> None:
    vs = rows(tiny_target.d_model)
    explain = by_vector(vs, lambda i: f'<explanation>Final token: a word.\nBefore it: "row{i}"</explanation>')
    r = heldout_rows(vs, tiny_target, explain=explain, reconstruct=quoted_reader(vs), baseline=0.5)
    p = r["perturbations"]["nla"]
    assert p["as written"]["fve"] == pytest.approx(1.0) and r["fve"] == pytest.approx(1.0)
    assert p["quotes only"]["delta"] == pytest.approx(0.0) and p["sentences shuffled"]["delta"] == pytest.approx(0.0)
    assert p["quotes deleted"]["delta"] < -0.5 and p["first line only"]["delta"] < -0.5
    assert p["quotes deleted"]["fve"] == pytest.approx(p["first line only"]["fve"])  # both read the constant
    assert r["perturbations"]["teacher"]["as written"]["fve"] == pytest.approx(1.0)
    split = r["breakdown"]["setting"]["nla as written"]
    assert set(split) == {"prose", "chat", "code"} and split["chat"]["fve"] == pytest.approx(1.0)
    assert r["breakdown"]["token type"]["nla quotes only"]


def test_nothing_quoted_gives_quote_grounding_na_not_zero(tiny_target, tmp_path: Path) -> None:
    vs = rows(tiny_target.d_model)
    explain = by_vector(vs, lambda i: "<explanation>Final token: a word, nothing quoted.</explanation>")
    r = heldout_rows(vs, tiny_target, explain=explain, reconstruct=quoted_reader(vs), baseline=0.5, teacher=False)
    assert r["quote_grounding"]["nla"] == {"quote_grounding": None, "quotes_per_explanation": 0.0}
    assert r["next_token"]["nla"]["with_claims"] == 0.0 and r["next_token"]["nla"]["in_top5"] is None
    assert "teacher" not in r["perturbations"]
    report = {"planting": {}, "topic_recall": {}, "heldout": r, "directions": []}
    head = headline(report)
    assert head["quote_grounding"] is None
    assert next(c for c in checks(head) if c["check"] == "quotes what is in the context")["passed"] is None
    assert "quote grounding n/a" in summary_text(report)
    write_report(report, tmp_path, plots=False)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["heldout"]["quote_grounding"]["nla"]["quote_grounding"] is None
    assert "n/a" in (tmp_path / "report.html").read_text()


def test_next_token_claims_copied_from_the_model_score_one_above_the_floor(tiny_target) -> None:
    vs = rows(tiny_target.d_model)
    ids = [tiny_target.tokenizer(c, add_special_tokens=False)["input_ids"] for c in CONTEXTS]
    tops = next_token_tops(tiny_target, ids)

    def truthful(i: int) -> str:
        claims = ", ".join(f'"{t}" {round(100 * p)}%' for t, p in tops[i][:3])
        return f"<explanation>Final token: a word. Next: {claims}.</explanation>"

    r = heldout_rows(
        vs, tiny_target, explain=by_vector(vs, truthful), reconstruct=quoted_reader(vs), baseline=0.5, teacher=False
    )
    nt = r["next_token"]["nla"]
    assert nt["with_claims"] == 1.0 and nt["in_top5"] == 1.0 and nt["top1"] == 1.0
    assert nt["abs_error_pp"] < 0.6  # rounding to whole percents only
    assert nt["in_top5_floor"] < 1.0 and nt["abs_error_pp_floor"] >= nt["abs_error_pp"]


def test_token_lookup_beside_the_nla_fve(tiny_target) -> None:
    vs = rows(tiny_target.d_model)
    train = VectorSet(vs.vectors.clone(), ["t"] * 4, list(CONTEXTS), None)  # same final tokens: lookup is exact
    explain = by_vector(vs, lambda i: "<explanation>x</explanation>")
    r = heldout_rows(vs, tiny_target, explain=explain, reconstruct=quoted_reader(vs), baseline=0.5, train=train)
    lk = r["token_lookup"]
    assert lk["fve_token_lookup"] == pytest.approx(1.0, abs=1e-5) and lk["token_lookup_seen"] == 1.0
    assert lk["train_rows"] == 4 and r["fve"] < lk["fve_token_lookup"]
    assert r["breakdown"]["setting"]["token lookup"]["prose"]["fve"] == pytest.approx(1.0, abs=1e-5)
