"""The suite tested with verbalizers whose truth is known (synthetic vectors, exact answers).

An oracle that names a concept exactly when the vector's projection on that concept's direction is large
must score hit rate 1 and false-positive rate 0; one that always says "cooking" must score false-positive
rate 1 for cooking; an AR that reads the named concepts back must move toward the planted direction.
"""

from __future__ import annotations

import pytest
import torch

from nla.faithfulness.concepts import Concept, ConceptSet
from nla.faithfulness.directions import Direction, auc, build_directions, plant
from nla.faithfulness.planting import planting, topic_recall

D, NAMES, ALPHAS = 32, ["cooking", "music", "law"], [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]


def concept_set() -> ConceptSet:
    cs = [Concept(n, (n, f"{n}s"), ("p1", "p2", "p3", "p4"), ("h1", "h2")) for n in NAMES]
    return ConceptSet("synthetic", tuple(cs), ("n1", "n2", "n3", "n4"), ("m1", "m2"))


def directions() -> list[Direction]:
    return [Direction(n, 5.0 * torch.eye(D)[i], 1.0, True) for i, n in enumerate(NAMES)]


def bases(n: int = 6) -> torch.Tensor:  # (n, D): no component along any concept direction
    v = torch.randn(n, D, generator=torch.Generator().manual_seed(1))
    v[:, : len(NAMES)] = 0
    return v


def groups(n: int) -> dict[str, list[str]]:
    return {"setting": ["prose", "chat"] * (n // 2), "token type": ["punctuation"] * n}


def oracle(vectors: torch.Tensor) -> list[str]:  # names concept i when cos(v, e_i) > 0.1
    out = []
    for v in vectors:
        cos = v[: len(NAMES)] / v.norm()
        named = [NAMES[i] for i in range(len(NAMES)) if cos[i] > 0.1]
        out.append(
            '<explanation>Final token: ".", a period.\nSetting: ' + (", ".join(named) or "plain") + ".</explanation>"
        )
    return out


def always_cooking(vectors: torch.Tensor) -> list[str]:
    return ['<explanation>Final token: " pot". Setting: a cooking show.</explanation>'] * vectors.shape[0]


W = torch.randn(D, generator=torch.Generator().manual_seed(2))
W[: len(NAMES)] = 0


def reader(texts: list[str]) -> torch.Tensor:  # the AR: the named concepts' directions on top of a fixed vector
    rows = []
    for t in texts:
        r = W.clone()
        for i, n in enumerate(NAMES):
            if n in t:
                r[i] += W.norm()
        rows.append(r)
    return torch.stack(rows)


def run(explain, reconstruct=reader) -> dict:
    b = bases()
    return planting(
        concept_set(),
        directions(),
        b,
        groups(6),
        alphas=ALPHAS,
        planted_bases=4,
        explain=explain,
        reconstruct=reconstruct,
    )


def test_oracle_scores_hit_rate_one_and_no_false_positives() -> None:
    r = run(oracle)
    assert r["false_positive_any"] == 0.0 and all(v == 0.0 for v in r["false_positive_rate"].values())
    for name in NAMES:
        assert r["hit_rate"][name] == {"0": 0.0, **{f"{a:g}": 1.0 for a in ALPHAS[1:]}}
    assert r["hit_rate_mean"]["1"] == 1.0 and r["hit_rate_mean"]["2"] == 1.0
    for a in ("0.25", "4"):
        for planted in NAMES:
            row = r["cross_talk"][a][planted]
            assert row[planted] == 1.0 and row["none"] == 0.0
            assert all(row[o] == 0.0 for o in NAMES if o != planted)
    assert r["hit_sites"]["part"] == {"setting": 3 * 5 * 4} and r["hit_sites"]["quoted"] == {"outside quotes": 60}
    assert all(x["names_it"] and x["named"] == [x["concept"]] for x in r["raw_directions"])
    assert r["planted_bases"] == 4 and r["bases"] == 6 and len(r["base_explanations"]) == 6


def test_keyword_free_score_follows_the_ar_reading() -> None:
    r = run(oracle)
    for a in ("0.25", "1", "4"):
        kf = r["keyword_free"][a]
        assert kf["moved_toward"] == 1.0 and kf["moved_toward_floor"] == 0.0
        assert kf["delta_cosine"] == pytest.approx(2**-0.5, abs=1e-4) and kf["delta_cosine_floor"] == pytest.approx(
            0.0, abs=1e-5
        )
    view = r["ar_view"]["music"]
    assert view["4"]["planted_cosine"] == pytest.approx(4 / 17**0.5, abs=1e-4)  # the truth a perfect AR would see
    assert view["0"]["ar_cosine"] == pytest.approx(0.0, abs=1e-5)
    assert r["raw_directions"][0]["ar_cosine"] == pytest.approx(2**-0.5, abs=1e-4)


def test_always_cooking_scores_false_positive_rate_one_for_cooking() -> None:
    r = run(always_cooking)
    assert r["false_positive_rate"] == {"cooking": 1.0, "music": 0.0, "law": 0.0}
    assert r["false_positive_any"] == 1.0
    assert r["hit_rate"]["cooking"]["2"] == 1.0 and r["hit_rate"]["music"]["2"] == 0.0
    assert r["cross_talk"]["2"]["law"]["cooking"] == 1.0 and r["cross_talk"]["2"]["law"]["law"] == 0.0
    assert r["keyword_free"]["2"]["moved_toward"] == 0.0  # the same text whatever is planted: the AR cannot move
    fp = r["breakdown"]["setting"]["false_positive_any"]
    assert fp == {"prose": {"n": 3, "value": 1.0}, "chat": {"n": 3, "value": 1.0}}
    assert r["breakdown"]["setting"]["hit_rate@2"]["prose"]["value"] == pytest.approx(1 / 3)


def test_invalid_directions_are_skipped_and_no_ar_means_no_keyword_free_score() -> None:
    dirs = directions()
    dirs[1] = Direction("music", dirs[1].vector, 0.6, False)
    r = planting(
        concept_set(), dirs, bases(), groups(6), alphas=[0.0, 1.0], planted_bases=2, explain=oracle, reconstruct=None
    )
    assert list(r["hit_rate"]) == ["cooking", "law"] and "ar_view" not in r and "keyword_free" not in r
    assert [x["concept"] for x in r["raw_directions"]] == ["cooking", "law"]
    assert set(r["false_positive_rate"]) == set(NAMES)  # false positives still cover every concept


def test_topic_recall_against_the_permutation_floor() -> None:
    labels = [n for n in NAMES for _ in range(2)]
    noise = bases(6) * 0.1
    vectors = torch.stack([5.0 * torch.eye(D)[NAMES.index(n)] for n in labels]) + noise
    g = groups(6)
    r = topic_recall(concept_set(), vectors, labels, g, explain=oracle)
    assert r["recall"] == 1.0 and r["floor"] == 0.0 and r["n"] == 6
    assert r["per_concept"]["law"] == {"recall": 1.0, "floor": 0.0, "example": r["explanations"][4]["explanation"]}
    r = topic_recall(concept_set(), vectors, labels, g, explain=always_cooking)
    assert r["recall"] == pytest.approx(1 / 3) and r["floor"] == pytest.approx(1 / 3)
    assert r["per_concept"]["music"] == {"recall": 0.0, "floor": 0.5, "example": r["explanations"][2]["explanation"]}


def test_directions_plant_and_auc() -> None:
    assert auc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert auc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5
    assert auc(torch.tensor([0.0, 5.0]), torch.tensor([1.0, 2.0])) == 0.5
    on = torch.zeros(8, D) + torch.eye(D)[0] * 3
    off = torch.zeros(8, D)
    (d,) = build_directions({"a": (on, on + 0.1)}, (off, off + 0.1))
    assert d.valid and d.auc == 1.0 and torch.allclose(d.unit, torch.eye(D)[0])
    v = torch.randn(3, D)
    p = plant(v, torch.eye(D)[0] * 7, 2.0)
    assert torch.allclose(p - v, 2.0 * v.norm(dim=-1, keepdim=True) * torch.eye(D)[0])
