"""Per-token trust (control as fve, the verdict, the sink mark) and the context window (select_tokens)."""

from __future__ import annotations

import pytest

from nla.common.errors import NLAError
from nla.explain.api import TokenExplanation
from nla.explain.inputs import Encoded, encode_input, select_tokens
from nla.explain.report import legend_lines, render_html, render_table, table_rows
from nla.explain.trust import COS_MARGIN, FVE_MARGIN, beats_control, control_fve, control_word, verdict


def test_control_fve_and_the_margin() -> None:
    assert control_fve(None, 0.5) is None and control_fve(0.7, None) is None
    assert control_fve(0.75, 0.5) == pytest.approx(1 - 2 * 0.25 / 0.5)  # = 0.0
    assert beats_control(0.30, 0.9, 0.30 - FVE_MARGIN, 0.8) is True  # exactly the margin counts
    assert beats_control(0.30, 0.9, 0.30 - FVE_MARGIN / 2, 0.1) is False  # fve decides when known
    assert beats_control(None, 0.9, None, 0.9 - COS_MARGIN / 2) is False
    assert beats_control(None, 0.9, None, 0.9 - COS_MARGIN - 1e-9) is True
    assert beats_control(None, None, None, None) is None
    assert [control_word(x) for x in (True, False, None)] == ["beats empty", "no better", "-"]
    assert [verdict(x) for x in (True, False, None)] == ["worth reading", "not worth it", "-"]


def _rec(pos: int, fve: float, ctrl: float, beats: bool | None, lookup: float = 0.2) -> TokenExplanation:
    return TokenExplanation(
        token=f"t{pos}",
        position=pos,
        explanation=f"e{pos}",
        raw="",
        fve=fve,
        cosine=0.5,
        mse_nrm=1.0,
        control_cosine=0.4,
        control_fve=ctrl,
        beats_control=beats,
        lookup_fve=lookup,
        worth_reading=fve > 0 and fve >= lookup,
    )


def test_table_and_html_show_control_verdict_sink_and_negative_legend() -> None:
    recs = [_rec(0, 0.9, 0.85, False, 0.95), _rec(1, -0.7, -0.2, False), _rec(2, 0.4, -0.3, True)]
    header, rows = table_rows(recs)
    assert header == ["pos", "token", "fve", "cos", "ctrl", "lookup", "verdict", "explanation"]
    assert rows[0][4:7] == ["+0.850", "+0.950", "not worth it (sink)"]  # below its token's lookup
    assert rows[2][4:7] == ["-0.300", "+0.200", "worth reading"]
    assert "worth reading" in render_table(recs, use_rich=True, width=200)
    lines = legend_lines(recs)
    assert "above 0 fve and above lookup" in lines[1] and "(1 of 3 here)" in lines[1] and "attention sink" in lines[2]
    page = render_html(recs, ["<s>", "t0", "t1", "t2"][1:], text_mask=[True, True, True])
    assert "below 0, striped (worse than predicting the mean, lowest here -0.700)" in page  # no clamping in the legend
    assert "Every explanation" in page and page.count("<tr data-i=") == 3  # the overview lists all
    assert 'class="t sink"' in page and 'class="t neg"' in page and "1 beat the empty explanation" in page
    assert "1 worth reading" in page


def test_html_marks_each_chat_turn() -> None:
    """Hidden template tokens must not run the turns together ('Rome?Sure!'): each turn gets a role marker."""
    tokens = ["<|im_start|>", "user\n", "Rome", "?", "<|im_end|>\n", "<|im_start|>", "assistant\n", "Sure", "!"]
    mask = [False, False, True, True, False, False, False, True, True]
    page = render_html([_rec(7, 0.4, 0.1, True)], tokens, text_mask=mask)
    body = page[page.index("<body") :]
    assert body.index('class="turn">user:') < body.index(">Rome<") < body.index('class="turn">assistant:')
    assert body.index('class="turn">assistant:') < body.index(">Sure<")
    assert 'class="turn"' not in render_html([_rec(1, 0.4, 0.1, True)], ["a", "b"], text_mask=[True, True])


def test_html_hides_template_tokens_unless_explained() -> None:
    recs = [_rec(2, 0.4, 0.1, True)]
    tokens = ["<|im_start|>", "user\n", "hi", "<|im_end|>"]
    page = render_html(recs, tokens, text_mask=[False, False, True, False])
    assert page.count('class="u tpl"') == 3 and "show the 3 tokens you did not type" in page
    assert 'class="u tpl"' not in render_html(recs, tokens)  # without a mask nothing is hidden


def test_text_positions_skip_template_and_system_prompt(tiny_target) -> None:
    tok = tiny_target.tokenizer
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    enc = encode_input(tok, msgs)
    _, picked = select_tokens(enc, "text", limit=None)
    assert "".join(enc.tokens[p] for p in picked) == "be briefhi"
    plain = encode_input(tok, "hello there")
    assert plain.text_mask == [True] * len(plain.input_ids)  # the tiny tokenizer adds no BOS


def _enc(n: int) -> Encoded:
    return Encoded(list(range(n)), [f"t{i}" for i in range(n)], None, [True] * n)


def test_select_tokens_respects_the_context_window() -> None:
    with pytest.raises(NLAError, match=r"reads at most 8 \(max_position_embeddings\).*--max-tokens 8"):
        select_tokens(_enc(20), "text", limit=8, limit_source="max_position_embeddings")
    with pytest.raises(NLAError, match="position 19 is past"):
        select_tokens(_enc(20), "last", limit=8)
    enc, picked = select_tokens(_enc(20), "0:8", limit=8)  # a window before the limit is fine
    assert picked == list(range(8)) and len(enc.input_ids) == 20
    enc, picked = select_tokens(_enc(20), "last", limit=8, max_tokens=5)
    assert enc.input_ids == [15, 16, 17, 18, 19] and enc.dropped == 15 and picked == [4]
    with pytest.raises(NLAError, match="more than"):
        select_tokens(_enc(20), "last", limit=8, max_tokens=9)
    assert select_tokens(_enc(20), "all", limit=None)[1] == list(range(20))  # no known limit: no check


def test_nla_explain_refuses_past_the_context_and_cuts_with_max_tokens(tiny_target) -> None:
    from nla.explain.api import NLA
    from nla.models.ar import ActivationReconstructor
    from nla.models.av import ActivationVerbalizer

    av = ActivationVerbalizer.from_target(tiny_target, injection_scale=8.0, layer=1)
    nla = NLA(av, ActivationReconstructor.from_target(tiny_target, 1), tiny_target, baseline=0.5)
    text = " ".join(["the quick brown fox"] * 200)  # > 512 tokens (max_position_embeddings of the tiny model)
    with pytest.raises(NLAError, match="reads at most 512"):
        nla.explain(text, "last", best_of=1, max_new_tokens=2)
    (rec,) = nla.explain(text, "last", best_of=1, max_new_tokens=2, max_tokens=16)
    assert rec.position == 15 and rec.control_fve == pytest.approx(1 - 2 * (1 - rec.control_cosine) / 0.5)
    assert rec.beats_control == (rec.fve - rec.control_fve >= FVE_MARGIN)
    assert rec.lookup_fve is None and rec.worth_reading == (rec.fve > 0 and rec.beats_control)  # no lookup table
