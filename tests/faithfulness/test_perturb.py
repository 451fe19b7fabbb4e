"""Perturbations of an explanation: exact outputs, quotes respected, seeded."""

from __future__ import annotations

import random

from nla.faithfulness.perturb import PERTURBATIONS, perturbed, sentences

TEXT = (
    'Final token: " pot", a word. Next: " of" 94%.\nBefore it: "...Bring a large. Big"\nSetting: chat, inside a turn.'
)


def test_each_perturbation_on_a_known_explanation() -> None:
    rng = random.Random(0)
    f = PERTURBATIONS
    assert f["as written"](TEXT, rng) == TEXT
    assert (
        f["quotes deleted"](TEXT, rng) == "Final token: , a word. Next: 94%.\nBefore it:\nSetting: chat, inside a turn."
    )
    assert f["quotes only"](TEXT, rng) == '" pot"\n" of"\n"...Bring a large. Big"'
    assert f["quotes only"]("no quotes here", rng) == ""
    assert f["first line only"](TEXT, rng) == 'Final token: " pot", a word. Next: " of" 94%.'
    assert list(PERTURBATIONS) == [
        "as written",
        "quotes deleted",
        "quotes only",
        "first line only",
        "sentences shuffled",
        "30% words dropped",
    ]


def test_sentences_never_split_inside_quotes_and_shuffle_changes_the_order() -> None:
    parts = sentences(TEXT)
    assert parts == [
        'Final token: " pot", a word.',
        'Next: " of" 94%.',
        'Before it: "...Bring a large. Big"',
        "Setting: chat, inside a turn.",
    ]
    for seed in range(5):
        out = PERTURBATIONS["sentences shuffled"](TEXT, random.Random(seed))
        assert sorted(out.split("\n")) == sorted(parts) and out.split("\n") != parts
    assert PERTURBATIONS["sentences shuffled"]("One sentence only", random.Random(0)) == "One sentence only"


def test_words_dropped_removes_thirty_percent_and_is_seeded() -> None:
    text = " ".join(f"w{i}" for i in range(20))
    out = PERTURBATIONS["30% words dropped"](text, random.Random(1))
    kept = out.split()
    assert len(kept) == 14 and all(w in text.split() for w in kept)
    assert kept == [w for w in text.split() if w in kept]  # order kept
    assert perturbed([text, text], "30% words dropped", seed=3) == perturbed([text, text], "30% words dropped", seed=3)
    a, b = perturbed([text, text], "30% words dropped", seed=3)
    assert a != b  # each row has its own generator
    assert PERTURBATIONS["30% words dropped"]("", random.Random(0)) == ""
