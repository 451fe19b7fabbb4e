"""Best-of-K decoding: candidate layout, the AR's choice, and ``NLA.explain(best_of=...)``."""

from __future__ import annotations

import pytest
import torch

from nla.common.errors import NLAError
from nla.evaluate.rerank import best_of, candidates, choose
from nla.models.sequences import Responses


class FakeAV:
    """Greedy answers 'g<i>', the j-th sampled slot 's<i>.<j>'; records the decoding arguments."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def sample_slots(self, vectors: torch.Tensor, slots, **kw) -> Responses:
        self.calls.append(dict(slots=list(slots), **kw))
        texts = []
        for i in range(vectors.shape[0]):
            drawn = 0
            for slot in slots:
                texts.append(f"g{i}" if slot.greedy else f"s{i}.{drawn}")
                drawn += not slot.greedy
        return Responses([[len(t)] for t in texts], texts, [False] * len(texts))


class FakeAR:
    """Reconstructs the vector named by the text's table entry (unknown text: the zero vector)."""

    def __init__(self, table: dict[str, torch.Tensor]) -> None:
        self.table = table

    def predict(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        d = next(iter(self.table.values())).shape[0]
        return torch.stack([self.table.get(t, torch.zeros(d)) for t in texts])


def test_candidates_put_greedy_first_then_the_samples_of_the_same_vector() -> None:
    av = FakeAV()
    c = candidates(av, torch.zeros(2, 3), 3, temperature=0.5, max_new_tokens=7, seed=4)
    assert c.texts == ["g0", "s0.0", "s0.1", "g1", "s1.0", "s1.1"]
    assert c.ids[1] == [4] and len(c.truncated) == 6
    call = av.calls[0]  # one generation: greedy + 2 samples per vector, sharing each vector's prefill
    assert [s.temperature for s in call["slots"]] == [0.0, 0.5, 0.5] and call["seed"] == 4
    assert call["max_new_tokens"] == 7 and call["batch_size"] == 16 * 3  # batch_size counts vectors
    assert candidates(FakeAV(), torch.zeros(2, 3), 1).texts == ["g0", "g1"]  # k = 1 is plain greedy
    with pytest.raises(NLAError):
        candidates(av, torch.zeros(1, 3), 0)


def test_choose_keeps_the_best_reconstruction_and_greedy_on_ties() -> None:
    v = torch.eye(3)[:2]  # (2, 3)
    ar = FakeAR(
        {
            "g0": -v[0],
            "s0.0": v[0],
            "s0.1": v[0] + 0.1 * v[1],  # vector 0: sample 0 is exact
            "g1": v[1],
            "s1.0": v[1],
            "s1.1": v[0],
        }
    )  # vector 1: greedy ties with sample 0
    chosen, mse = best_of(FakeAV(), ar, v, 3)
    assert chosen.texts == ["s0.0", "g1"]
    assert (
        mse.shape == (2, 3) and mse[0, 0] == pytest.approx(4.0, abs=1e-4) and mse[0, 1] == pytest.approx(0.0, abs=1e-4)
    )
    with pytest.raises(NLAError, match="candidates"):
        choose(ar, v, Responses([[1]], ["g0"], [False]), 3)


def test_explain_best_of_ranks_every_candidate(tiny_nla) -> None:
    recs = tiny_nla.explain("fox dog cat", "last", max_new_tokens=3, best_of=3)
    (r,) = recs
    assert len(r.samples) == 3 and r.mse_nrm == min(s.mse_nrm for s in r.samples)
    assert [s.mse_nrm for s in r.samples] == sorted(s.mse_nrm for s in r.samples)
    greedy = tiny_nla.explain("fox dog cat", "last", max_new_tokens=3, best_of=1)[0]
    assert greedy.raw in {s.raw for s in r.samples}  # the greedy answer is one of the candidates
    assert r.mse_nrm <= greedy.mse_nrm + 1e-6
    with pytest.raises(NLAError, match="num-samples"):
        tiny_nla.explain("fox", "last", max_new_tokens=2, best_of=2, num_samples=2)


def test_best_of_needs_an_ar(tiny_nla) -> None:
    from nla.explain.api import NLA

    no_ar = NLA(tiny_nla.av, None, tiny_nla.target)
    with pytest.raises(NLAError, match="needs an AR"):
        no_ar.explain("fox", "last", max_new_tokens=2, best_of=2)


@pytest.fixture(scope="module")
def tiny_nla(tmp_path_factory: pytest.TempPathFactory):
    from nla.explain.api import NLA
    from nla.models.ar import ActivationReconstructor
    from nla.models.av import ActivationVerbalizer
    from nla.models.target import load_target

    from helpers import save_tiny_target

    root = tmp_path_factory.mktemp("rerank")
    save_tiny_target(root / "target")
    target = load_target(str(root / "target"))
    av = ActivationVerbalizer.from_target(target, injection_scale=8.0, layer=1)
    return NLA(av, ActivationReconstructor.from_target(target, 1), target)


class TopicAV:
    """Greedy and sampled answers with a rich-style topic line; token ids are the characters' codes."""

    tokenizer = type("Tok", (), {"encode": staticmethod(lambda s, add_special_tokens=False: [ord(c) for c in s])})()

    def __init__(self, greedy: str, samples: list[str]) -> None:
        self.greedy, self.samples = greedy, samples

    def sample_slots(self, vectors: torch.Tensor, slots, **kw) -> Responses:
        drawn = iter(self.samples)
        texts = [self.greedy if slot.greedy else next(drawn) for slot in slots]
        return Responses([[ord(c) for c in t] + [0] for t in texts], texts, [False] * len(texts))


def _line(topic: str) -> str:
    return f"<explanation>Final token: x.\nTopic: {topic}. Language: English.</explanation>"


def test_candidates_keep_only_the_claims_two_answers_make() -> None:
    av = TopicAV(_line("unclear; words: shells"), [_line("food and cooking; words: fruit, shells"), _line("unclear")])
    c = candidates(av, torch.zeros(1, 3), 3)  # the default min_support: 2
    assert c.texts == [_line("unclear; words: shells"), _line("unclear; words: shells"), _line("unclear")]
    assert c.ids[1] == [ord(ch) for ch in c.texts[1]] + [0]  # edited: tokenised again, end-of-turn kept
    assert c.ids[2] == [ord(ch) for ch in _line("unclear")] + [0]
    raw = candidates(av, torch.zeros(1, 3), 3, min_support=1)
    assert raw.texts[1] == _line("food and cooking; words: fruit, shells")
