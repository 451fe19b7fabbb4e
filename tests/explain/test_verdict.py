"""The verdict 'worth reading': above zero fve AND above the token lookup (nla.explain.trust)."""

from __future__ import annotations

import pytest
import torch

from nla.common.errors import NLAError
from nla.explain.trust import LOOKUP_MARGIN, TokenLookup, find_lookup, lookup_scores, worth_reading


def test_worth_reading_needs_positive_fve_and_the_lookup() -> None:
    assert worth_reading(-0.16, 0.9, -0.5, 0.6, True) is False  # beats everything but below zero: never marked
    assert worth_reading(0.0, 0.9, -0.5, 0.6, True) is False
    assert worth_reading(0.30, 0.9, 0.45, 0.9, True) is False  # beats empty, but the token alone says more
    assert worth_reading(0.50, 0.9, 0.45 - LOOKUP_MARGIN, 0.9, False) is True  # the lookup decides, not empty
    assert worth_reading(0.10, 0.9, None, None, True) is True and worth_reading(0.10, 0.9, None, None, False) is False
    assert worth_reading(None, 0.9, None, 0.8, None) is True and worth_reading(None, 0.7, None, 0.8, True) is False
    assert worth_reading(None, None, None, None, None) is None


def test_token_lookup_roundtrip_and_scores(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    means = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=-1)
    overall = means.mean(0)
    table = TokenLookup(torch.tensor([5, 9, 11]), means, overall, {"layer": "1"})
    table.save(tmp_path / "t.safetensors")
    back = TokenLookup.load(tmp_path / "t.safetensors")
    assert back.meta["layer"] == "1" and back.row_of == {5: 0, 9: 1, 11: 2}
    want = torch.stack([means[1], overall, overall])
    torch.testing.assert_close(back.reference([9, 7, None]), want, atol=2e-3, rtol=0)
    vectors = torch.stack([means[1] * 3.0, -means[1]])  # the lookup of token 9 predicts the first exactly
    fves, coss = lookup_scores(back, vectors, [9, 9], baseline=0.5)
    assert coss[0] == pytest.approx(1.0, abs=1e-3) and fves[0] == pytest.approx(1.0, abs=1e-2)
    assert fves[1] == pytest.approx(1 - 2 * 2 / 0.5, abs=1e-2)  # opposite direction: cos -1
    assert lookup_scores(None, vectors, [9, 9], 0.5) == ([None, None], [None, None])
    assert lookup_scores(back, vectors, [9, 9], None)[0] == [None, None]
    with pytest.raises(NLAError, match="width"):
        lookup_scores(back, torch.ones(1, 4), [9], 0.5)
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(NLAError, match="cannot read the token lookup"):
        TokenLookup.load(tmp_path / "bad.safetensors")


def test_shipped_nla_has_a_lookup_table_of_its_width() -> None:
    from nla.resources import default_nla_dir

    path = find_lookup(default_nla_dir() / "av")
    assert path is not None
    table = TokenLookup.load(path)
    assert table.d_model == 576 and len(table.row_of) >= 500 and table.meta["layer"] == "20"
    assert path.stat().st_size < 5_000_000


def test_nla_records_carry_lookup_and_verdict(tiny_target, tmp_path) -> None:
    from nla.explain.api import NLA
    from nla.models.ar import ActivationReconstructor
    from nla.models.av import ActivationVerbalizer

    av = ActivationVerbalizer.from_target(tiny_target, injection_scale=8.0, layer=1)
    d = int(av.d_model)
    ids = torch.arange(0, 50)
    table = TokenLookup(ids, torch.nn.functional.normalize(torch.randn(50, d), dim=-1), torch.zeros(d) + 0.1, {})
    nla = NLA(av, ActivationReconstructor.from_target(tiny_target, 1), tiny_target, baseline=0.5, lookup=table)
    recs = nla.explain("hello there friend", "all", best_of=1, max_new_tokens=2)
    acts = nla.activations(nla.encode("hello there friend").input_ids)
    for r in recs:
        tid = nla.encode("hello there friend").input_ids[r.position]
        ref = table.reference([tid])[0]
        cos = float(torch.nn.functional.cosine_similarity(ref, acts[r.position], dim=0))
        assert r.lookup_fve == pytest.approx(1 - 2 * (1 - cos) / 0.5, abs=1e-4)
        assert r.worth_reading == (r.fve > 0 and r.fve >= r.lookup_fve + LOOKUP_MARGIN)
    (vrec,) = nla.explain_vectors(torch.randn(d), best_of=1, max_new_tokens=2)
    assert vrec.lookup_fve is not None and vrec.worth_reading is not None  # the overall mean stands in
    with pytest.raises(NLAError, match="token lookup has"):
        NLA(av, None, tiny_target, lookup=TokenLookup(ids[:1], torch.ones(1, d + 1), torch.ones(d + 1), {}))


def test_activations_take_what_encode_returns(tiny_target) -> None:
    from nla.explain.api import NLA
    from nla.models.av import ActivationVerbalizer

    nla = NLA(ActivationVerbalizer.from_target(tiny_target, injection_scale=8.0, layer=1), None, tiny_target)
    enc = nla.encode("the quick brown fox")
    by_ids = nla.activations(enc.input_ids)
    torch.testing.assert_close(nla.activations(enc), by_ids)  # the natural call works
    torch.testing.assert_close(nla.activations("the quick brown fox"), by_ids)
    with pytest.raises(NLAError, match="takes token ids"):
        nla.activations([{"a": 1}])
    with pytest.raises(NLAError, match="at least one token"):
        nla.activations([])
