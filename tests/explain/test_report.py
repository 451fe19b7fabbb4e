from __future__ import annotations

import json
import re

from nla.explain.api import Sample, TokenExplanation, VectorExplanation
from nla.explain.report import render_html, render_table, score_colour, summary, write_html, write_jsonl


def _records() -> list[TokenExplanation]:
    good = Sample(raw="<explanation>a city</explanation>", explanation="a city", cosine=0.9, mse_nrm=0.2, fve=0.6)
    bad = Sample(raw="漢字漢字", explanation=None, cjk=True)
    return [
        TokenExplanation(
            token=" Paris",
            position=1,
            explanation="a city",
            raw=good.raw,
            fve=0.6,
            cosine=0.9,
            mse_nrm=0.2,
            control_cosine=0.4,
            samples=[good, good],
        ),
        TokenExplanation(
            token="<script>alert(1)</script>", position=2, explanation=None, raw=bad.raw, cjk=True, samples=[bad]
        ),
    ]


def test_table_plain_and_rich_show_every_record() -> None:
    recs = _records()
    for use_rich in (False, True):
        out = render_table(recs, use_rich=use_rich, width=200)
        assert "a city" in out and "+0.600" in out and "+0.900" in out
        assert "CJK" in out and "no explanation tag" in out
    plain = render_table(recs, use_rich=False).splitlines()
    assert plain[0].split()[:4] == ["pos", "token", "fve", "cos"]
    assert len(plain) == 3


def test_rich_markup_in_text_is_shown_verbatim() -> None:
    rec = TokenExplanation(token="[/]", position=0, explanation="[bold]x[/bold]", raw="", cosine=0.5)
    out = render_table([rec], use_rich=True)
    assert "[/]" in out and "[bold]x[/bold]" in out


def test_vector_table() -> None:
    rec = VectorExplanation(index=0, norm=3.0, explanation="negation", raw="", cosine=0.5)
    out = render_table([rec], use_rich=False)
    assert out.splitlines()[0].split()[:2] == ["#", "norm"] and "negation" in out


def test_jsonl_one_record_per_token(tmp_path) -> None:
    path = tmp_path / "sub" / "out.jsonl"
    write_jsonl(path, _records())
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["position"] for r in rows] == [1, 2]
    assert rows[0]["samples"][0]["cosine"] == 0.9 and rows[1]["explanation"] is None
    assert not list(path.parent.glob(".*tmp"))  # no temporary file left behind


def test_html_escapes_and_is_self_contained(tmp_path) -> None:
    tokens = ["<blink>", " Paris", "<script>alert(1)</script>", "&x"]
    page = render_html(_records(), tokens, title="t <i>", notes=["note </p><script>"])
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<blink>" not in page and "&lt;blink&gt;" in page and "&amp;x" in page
    assert page.count("<script>") == 1  # only our own inline script
    assert not re.search(r"(src|href)=\"?(https?:)?//", page)  # no external resources
    assert 'data-i="0"' in page and 'data-i="1"' in page  # explained tokens are clickable
    assert 'class="u"' in page  # unexplained tokens are shown plain
    path = tmp_path / "r.html"
    write_html(path, _records(), tokens)
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_colour_scale_and_summary() -> None:
    assert score_colour(None) == ""
    assert score_colour(-3.0) == score_colour(0.0) == "hsl(0,75%,80%)"
    assert score_colour(1.0) == "hsl(120,75%,80%)"
    s = summary(_records())
    assert s["n"] == 2 and s["n_explained"] == 1 and s["n_cjk"] == 1 and s["mean_fve"] == 0.6
