"""``nla serve-sglang``: SGLang's /generate with input_embeds, as the official NLAClient calls it."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from nla.core.inject import chat_prompt_ids, fill_template
from nla.models.av import ActivationVerbalizer
from nla.serve.sglang import Sampling, create_app


@pytest.fixture
def av(tiny_target) -> ActivationVerbalizer:
    return ActivationVerbalizer.from_target(tiny_target, injection_scale=6.0, layer=1)


def client_embeds(av: ActivationVerbalizer, v: torch.Tensor) -> list[list[float]]:
    """What NLAClient._build_embeds sends: the chat prompt's embeddings, the marker row replaced by v
    rescaled to injection_scale (the marker found by its id and neighbours)."""
    ids = chat_prompt_ids(av.tokenizer, fill_template(av.template, av.marker.char))
    with torch.no_grad():
        emb = av.model.get_input_embeddings()(torch.tensor(ids)).float()
    p = next(
        i for i in range(1, len(ids) - 1) if ids[i] == av.marker.token_id and ids[i - 1] == av.marker.left_neighbor_id
    )
    emb[p] = v / v.norm() * av.injection_scale
    return emb.tolist()


def test_greedy_generation_from_embeds_equals_nla_explain(av: ActivationVerbalizer) -> None:
    http = TestClient(create_app(av.model, av.tokenizer))
    vs = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    want = av.sample(vs, max_new_tokens=12)
    sp = {"temperature": 0, "max_new_tokens": 12, "skip_special_tokens": False}
    for i, v in enumerate(vs):
        r = http.post("/generate", json={"input_embeds": client_embeds(av, v), "sampling_params": sp})
        assert r.status_code == 200
        body = r.json()
        ids = [t for t in want.ids[i] if t != av.eot_id]
        assert body["output_ids"] == ids  # the stop token is trimmed, as in SGLang
        assert body["meta_info"]["finish_reason"]["type"] == ("length" if want.truncated[i] else "stop")
    batch = http.post("/generate", json={"input_embeds": [client_embeds(av, v) for v in vs[:2]], "sampling_params": sp})
    assert [b["output_ids"] for b in batch.json()] == [[t for t in want.ids[i] if t != av.eot_id] for i in (0, 1)]


def test_bad_requests_are_one_json_error(av: ActivationVerbalizer) -> None:
    http = TestClient(create_app(av.model, av.tokenizer))
    good = [[0.0] * 64] * 3
    for body, match in (
        ({"input_embeds": good, "input_ids": [1, 2]}, "not both"),
        ({"input_embeds": [[0.0] * 5]}, "d_model=64"),
        ({"input_embeds": good, "sampling_params": {"temperature": -1}}, "out of range"),
        ({"input_embeds": "x"}, "must be"),
        ({}, "needs input_embeds"),
    ):
        r = http.post("/generate", json=body)
        assert r.status_code == 400 and match in r.json()["error"]
    assert http.get("/health").json() == {"status": "ok"}


def test_sampling_defaults_and_parse() -> None:
    s = Sampling.parse({"temperature": 0.7, "max_new_tokens": 5, "stop_token_ids": [3], "sampling_seed": 1})
    assert (s.temperature, s.max_new_tokens, s.stop_token_ids, s.seed, s.top_k) == (0.7, 5, [3], 1, -1)
    assert Sampling.parse(None) == Sampling()
