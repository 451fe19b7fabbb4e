from __future__ import annotations

import pytest
import torch

from nla.common.errors import NLAError
from nla.core.inject import (
    Injector,
    Marker,
    chat_prompt_ids,
    choose_marker,
    fill_template,
    inject,
    verify_marker,
)
from nla.core.metrics import normalize_to

from helpers import tiny_target, tiny_tokenizer

TEMPLATE = "Explain <concept>{injection_char}</concept> now."


def test_inject_replaces_exactly_one_position_per_row() -> None:
    embeds = torch.randn(3, 5, 4, requires_grad=True)
    vectors = torch.tensor([[3.0, 4.0, 0, 0], [0, 0, 0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    pos = torch.tensor([0, 4, 2])
    out = inject(embeds, pos, vectors, scale=10.0)
    expected = embeds.detach().clone()
    expected[0, 0] = torch.tensor([6.0, 8.0, 0, 0])
    expected[1, 4] = torch.tensor([0, 0, 0, 10.0])
    expected[2, 2] = torch.tensor([5.0, 5.0, 5.0, 5.0])
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-5)
    raw = inject(embeds, pos, vectors, scale=None)
    torch.testing.assert_close(raw[1, 4], vectors[1])
    out.sum().backward()  # gradient reaches every embedding except the replaced ones
    grad = embeds.grad
    assert grad[0, 0].abs().sum() == 0 and grad[1, 4].abs().sum() == 0
    assert bool((grad[0, 1:] == 1).all()) and bool((grad[2, :2] == 1).all())


def _capture_block0_input(model):
    """Record the hidden states entering decoder block 0 (= embedding output, after Gemma's scale)."""
    seen: list[torch.Tensor] = []

    def pre(_m, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        seen.append(h.detach().clone())

    layers = model.model.layers
    return seen, layers[0].register_forward_pre_hook(pre, with_kwargs=True)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_training_forward_only_marker_changes(arch: str) -> None:
    t = tiny_target(arch)
    marker = choose_marker(t.tokenizer, TEMPLATE)
    prompt = chat_prompt_ids(t.tokenizer, fill_template(TEMPLATE, marker.char))
    ids = torch.tensor([prompt, prompt])
    vectors = torch.randn(2, t.d_model) * 7
    seen, h = _capture_block0_input(t.model)
    with torch.no_grad():
        t.model(input_ids=ids)
        with Injector(t.model, marker.token_id, vectors, scale=3.0) as inj:
            t.model(input_ids=ids)
            t.model(input_ids=ids)  # once=True: the second forward is untouched
    h.remove()
    clean, injected, after = seen
    p = prompt.index(marker.token_id)
    assert inj.calls == 1
    torch.testing.assert_close(injected[:, p], normalize_to(vectors, 3.0))
    assert injected[:, p].norm(dim=-1).allclose(torch.tensor(3.0))
    keep = torch.ones(len(prompt), dtype=torch.bool)
    keep[p] = False
    torch.testing.assert_close(injected[:, keep], clean[:, keep], rtol=0, atol=0)
    torch.testing.assert_close(after, clean, rtol=0, atol=0)
    if arch == "gemma3":  # the embedding module scales by sqrt(d): injection must land after that
        assert t.embed_scale == pytest.approx(8.0)
        raw = t.model.get_input_embeddings().weight[ids[0, 0]] * 8.0
        torch.testing.assert_close(clean[0, 0], raw.to(clean.dtype))


def test_generation_left_padding_injects_only_in_prefill() -> None:
    t = tiny_target("llama")
    tok = t.tokenizer
    marker = choose_marker(tok, TEMPLATE)
    long = chat_prompt_ids(tok, fill_template("A longer preamble here. " + TEMPLATE, marker.char))
    short = chat_prompt_ids(tok, fill_template(TEMPLATE, marker.char))
    assert len(long) > len(short)
    pad = len(long) - len(short)
    ids = torch.tensor([long, [tok.pad_token_id] * pad + short])
    mask = torch.tensor([[1] * len(long), [0] * pad + [1] * len(short)])
    vectors = torch.randn(2, t.d_model)
    # force the model to emit the marker token at every decode step: it must NOT be injected then
    bias = torch.full((t.model.config.vocab_size,), -1e4)
    bias[marker.token_id] = 1e4
    t.model.lm_head.register_forward_hook(lambda _m, _a, out: out + bias)
    seen, h = _capture_block0_input(t.model)
    with torch.no_grad(), Injector(t.model, marker.token_id, vectors, scale=5.0) as inj:
        out = t.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id
        )
    h.remove()
    assert inj.calls == 1
    assert (out[:, ids.shape[1] :] == marker.token_id).all()  # the marker was emitted ...
    prefill, decode_steps = seen[0], seen[1:]
    assert len(decode_steps) == 3
    emb = t.model.get_input_embeddings().weight
    for step in decode_steps:  # ... and entered as its plain embedding
        torch.testing.assert_close(step[:, -1], emb[marker.token_id].expand(2, -1))
    positions = [len(long) - 1 - long[::-1].index(marker.token_id), pad + short.index(marker.token_id)]
    for b, p in enumerate(positions):
        torch.testing.assert_close(prefill[b, p], normalize_to(vectors[b], 5.0))
        others = [i for i in range(ids.shape[1]) if i != p]
        torch.testing.assert_close(prefill[b, others], emb[ids[b, others]], rtol=0, atol=0)


def test_additive_mode_adds_at_chosen_block() -> None:
    t = tiny_target("qwen2")
    marker = choose_marker(t.tokenizer, TEMPLATE)
    prompt = chat_prompt_ids(t.tokenizer, fill_template(TEMPLATE, marker.char))
    ids = torch.tensor([prompt])
    p = prompt.index(marker.token_id)
    v = torch.randn(1, t.d_model)
    seen: list[torch.Tensor] = []
    h = t.model.model.layers[2].register_forward_pre_hook(
        lambda _m, a, k: seen.append((a[0] if a else k["hidden_states"]).clone()), with_kwargs=True
    )
    with torch.no_grad():
        t.model(input_ids=ids)
        with Injector(t.model, marker.token_id, v, scale=2.0, mode="add", add_layer=1):
            t.model(input_ids=ids)
    h.remove()
    clean, added = seen
    torch.testing.assert_close(added[0, p] - clean[0, p], normalize_to(v[0], 2.0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(added[0, :p], clean[0, :p])


def test_choose_marker_avoids_corpus_and_is_verified() -> None:
    tok = tiny_tokenizer()
    m = choose_marker(tok, TEMPLATE)
    m2 = choose_marker(tok, TEMPLATE, corpus_texts=[f"text with {m.char} inside"])
    assert m2.char != m.char
    prompt = chat_prompt_ids(tok, fill_template(TEMPLATE, m.char))
    p = verify_marker(tok, prompt, m)
    assert prompt[p] == m.token_id and prompt[p - 1] == m.left_neighbor_id and prompt[p + 1] == m.right_neighbor_id
    with pytest.raises(NLAError, match="placeholder"):
        choose_marker(tok, "no placeholder here")


def test_verify_marker_failures() -> None:
    tok = tiny_tokenizer()
    m = choose_marker(tok, TEMPLATE)
    with pytest.raises(NLAError, match="absent"):
        verify_marker(tok, chat_prompt_ids(tok, "no marker at all"), m)
    twice = chat_prompt_ids(tok, fill_template(TEMPLATE + " again <concept>{injection_char}</concept>", m.char))
    with pytest.raises(NLAError, match="2 times"):
        verify_marker(tok, twice, m)
    split = Marker("\u320e", m.token_id, m.left_neighbor_id, m.right_neighbor_id)  # 3 byte tokens here
    with pytest.raises(NLAError, match="split into 3 tokens"):
        verify_marker(tok, chat_prompt_ids(tok, fill_template(TEMPLATE, split.char)), split)
    wrong_neighbour = Marker(m.char, m.token_id, m.left_neighbor_id + 1, m.right_neighbor_id)
    prompt = chat_prompt_ids(tok, fill_template(TEMPLATE, m.char))
    with pytest.raises(NLAError, match="neighbour"):
        verify_marker(tok, prompt, wrong_neighbour)


def test_injector_rejects_rows_without_single_marker() -> None:
    t = tiny_target("llama")
    m = choose_marker(t.tokenizer, TEMPLATE)
    ids = torch.tensor([[5, m.token_id, 7, m.token_id]])
    with pytest.raises(NLAError, match="2 times"), Injector(t.model, m.token_id, torch.randn(1, t.d_model), 1.0):
        t.model(input_ids=ids)
