from __future__ import annotations

import math

import pytest
import torch
import yaml

from nla.common.errors import NLAError
from nla.core.inject import chat_prompt_ids, choose_marker, fill_template, inject
from nla.models.av import ActivationVerbalizer, default_injection_scale, injection_failed
from nla.models.lora import apply_lora, is_lora
from nla.models.sequences import end_of_turn_id
from nla.models.target import load_target

from helpers import save_tiny_target, tiny_target

RESPONSES = ["<explanation>The text is about cooking pasta.</explanation>", "<explanation>hello</explanation>"]


def _av(arch: str = "llama", scale: float | None = 4.0) -> ActivationVerbalizer:
    return ActivationVerbalizer.from_target(tiny_target(arch), injection_scale=scale, layer=1)


def test_default_injection_scale_rounding_rule() -> None:
    def scale_for(mean_norm: float) -> float:
        v = torch.zeros(2, 8)
        v[:, 0] = mean_norm
        return default_injection_scale(v)

    assert scale_for(236.0) == 250.0
    assert scale_for(250.0) == 300.0
    assert scale_for(7.3) == 7.5
    assert scale_for(73000.0) == 75000.0
    with pytest.raises(NLAError):
        default_injection_scale(torch.zeros(3, 4))


def test_from_target_copies_and_verifies_prompt() -> None:
    t = tiny_target("llama")
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    av = ActivationVerbalizer.from_target(t, injection_scale=4.0, layer=1)
    with torch.no_grad():
        for p in av.model.parameters():
            p.add_(1.0)
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, before[k])
    ids = av.prompt_ids()
    assert ids.count(av.marker.token_id) == 1
    assert av.tokenizer.decode(ids).count("<concept>") == 1
    assert av.eot_id == av.tokenizer.convert_tokens_to_ids("<|im_end|>") == end_of_turn_id(av.tokenizer)
    with pytest.raises(NLAError, match="out of range"):
        ActivationVerbalizer.from_target(t, injection_scale=4.0, layer=7)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_logprobs_match_manual_injection_and_mask_covers_response(arch: str) -> None:
    av = _av(arch)
    v = torch.randn(2, av.d_model)
    batch = av.encode(v, RESPONSES)
    p = len(av.prompt_ids())
    for i, r in enumerate(RESPONSES):
        resp = av.tokenizer.encode(r, add_special_tokens=False) + [av.eot_id]
        assert batch.response_mask[i].nonzero().squeeze(-1).tolist() == list(range(p, p + len(resp)))
        assert batch.input_ids[i, p : p + len(resp)].tolist() == resp
    logp, mask = av.response_logprobs(v, RESPONSES)  # (2, R)
    # reference: build the input embeddings by hand (embedding module output includes Gemma's scale)
    with torch.no_grad():
        emb = av.model.get_input_embeddings()(batch.input_ids)
        pos = torch.full((2,), av.prompt_ids().index(av.marker.token_id))
        logits = av.model(inputs_embeds=inject(emb, pos, v, 4.0), attention_mask=batch.attention_mask).logits
    ref = torch.log_softmax(logits.float(), -1)[:, p - 1 : -1].gather(-1, batch.input_ids[:, p:, None]).squeeze(-1)
    torch.testing.assert_close(logp[mask], ref[mask], atol=1e-4, rtol=1e-4)
    assert (~mask).any() and (logp[~mask] == 0).all()  # padding: no log-prob (the responses differ in length)
    assert mask.sum(-1).tolist() == [int(batch.response_mask[i].sum()) for i in range(2)]
    nll = av.nll(v, RESPONSES)
    torch.testing.assert_close(nll, -(ref * mask).sum(-1) / mask.sum(-1), atol=1e-4, rtol=1e-4)
    # the vector matters: another vector gives another NLL
    assert not torch.allclose(av.nll(torch.randn(2, av.d_model), RESPONSES), nll)


def test_sft_loss_has_gradient() -> None:
    av = _av()
    av.model.requires_grad_(True)
    loss = av.sft_loss(av.encode(torch.randn(2, av.d_model), RESPONSES))
    loss.backward()
    assert math.isfinite(loss.item()) and av.model.lm_head.weight.grad is not None


def test_generate_batched_equals_one_at_a_time() -> None:
    av = _av()
    v = torch.randn(3, av.d_model) * 3
    batched = av.generate(v, max_new_tokens=8, batch_size=16)
    single = [av.generate(v[i : i + 1], max_new_tokens=8)[0] for i in range(3)]
    assert batched == single
    assert [len(x) for x in batched] == [1, 1, 1]
    sampled = av.generate(v[:2], max_new_tokens=6, do_sample=True, num_samples=3, batch_size=4, seed=1)
    again = av.generate(v[:2], max_new_tokens=6, do_sample=True, num_samples=3, batch_size=4, seed=1)
    assert [len(x) for x in sampled] == [3, 3] and sampled == again
    assert all(isinstance(s, str) for row in sampled for s in row)
    assert len(av.generate(v[:1], max_new_tokens=6)[0][0]) > 0  # not sliced away


def test_injection_failed_flags_cjk() -> None:
    assert injection_failed(["\u4e2d\u6587\u5b57\u7b26", "\u65e5\u672c"])
    assert not injection_failed(["<explanation>plain english</explanation>"])
    assert not injection_failed([])


def test_save_load_full_and_lora(tmp_path) -> None:
    base_dir = save_tiny_target(tmp_path / "base", "llama")
    t = load_target(str(base_dir))
    av = ActivationVerbalizer.from_target(t, injection_scale=5.0, layer=1)
    v = torch.randn(2, av.d_model)
    av.save_pretrained(tmp_path / "full")
    meta = yaml.safe_load((tmp_path / "full" / "nla_meta.yaml").read_text())
    assert meta["role"] == "av" and meta["tokens"]["injection_token_id"] == av.marker.token_id
    assert meta["extraction"] == {
        "base_model": str(base_dir),
        "layer_index": 1,
        "injection_scale": 5.0,
        "mse_scale": 8.0,  # a number (sqrt(64)): the official readers call float() on it
    }
    loaded = ActivationVerbalizer.from_pretrained(tmp_path / "full")
    assert loaded.marker == av.marker and loaded.template == av.template and loaded.injection_scale == 5.0
    torch.testing.assert_close(loaded.nll(v, RESPONSES), av.nll(v, RESPONSES))

    av.model = apply_lora(av.model, r=4, alpha=8)
    with torch.no_grad():
        for name, p in av.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    want = av.nll(v, RESPONSES)
    av.save_pretrained(tmp_path / "adapter")
    assert not (tmp_path / "adapter" / "model.safetensors").exists()
    back = ActivationVerbalizer.from_pretrained(tmp_path / "adapter")
    assert is_lora(back.model)
    torch.testing.assert_close(back.nll(v, RESPONSES), want, atol=1e-5, rtol=1e-5)
    on_load = ActivationVerbalizer.from_pretrained(tmp_path / "adapter", merged=True)
    assert not is_lora(on_load.model)
    assert torch.equal(on_load.nll(v, RESPONSES), back.for_inference().nll(v, RESPONSES))
    av.save_pretrained(tmp_path / "merged", merge_lora=True)
    merged = ActivationVerbalizer.from_pretrained(tmp_path / "merged")
    assert not is_lora(merged.model) and is_lora(av.model)
    torch.testing.assert_close(merged.nll(v, RESPONSES), want, atol=1e-4, rtol=1e-4)


def _fabricate_official(path, *, token_shift: int = 0, scale="sqrt_d_model"):
    """A tiny checkpoint in the released format: HF dir + tokenizer + training-time sidecar."""
    save_tiny_target(path, "qwen2")
    t = load_target(str(path))
    tmpl = "Explain the concept <concept>{injection_char}</concept> please."
    m = choose_marker(t.tokenizer, tmpl)
    meta = {
        "kind": "nla_model",
        "role": "actor",
        "d_model": 64,
        "extraction": {"base_model": "Qwen/Qwen2.5-7B-Instruct", "layer_index": 2, "injection_scale": scale},
        "tokens": {
            "injection_char": m.char,
            "injection_token_id": m.token_id + token_shift,
            "injection_left_neighbor_id": m.left_neighbor_id,
            "injection_right_neighbor_id": m.right_neighbor_id,
        },
        "prompt_templates": {
            "actor": tmpl,
            "critic": "Summary of the following text: <text>{explanation}</text> <summary>",
        },
    }
    (path / "nla_meta.yaml").write_text(yaml.safe_dump(meta, allow_unicode=True))
    return m, tmpl


def test_official_format_checkpoint_loads_and_generates(tmp_path) -> None:
    m, tmpl = _fabricate_official(tmp_path / "official")
    av = ActivationVerbalizer.from_pretrained(tmp_path / "official")
    assert av.marker == m and av.template == tmpl and av.layer == 2
    assert av.injection_scale == pytest.approx(8.0)  # sqrt(64)
    assert av.prompt_ids() == chat_prompt_ids(av.tokenizer, fill_template(tmpl, m.char))
    out = av.generate(torch.randn(2, 64), max_new_tokens=5)
    assert len(out) == 2 and all(len(r) == 1 for r in out)
    _fabricate_official(tmp_path / "raw", scale=None)
    assert ActivationVerbalizer.from_pretrained(tmp_path / "raw").injection_scale is None


def test_official_checkpoint_with_wrong_token_id_is_rejected(tmp_path) -> None:
    _fabricate_official(tmp_path / "bad", token_shift=1)
    with pytest.raises(NLAError, match="token"):
        ActivationVerbalizer.from_pretrained(tmp_path / "bad")
    meta = yaml.safe_load((tmp_path / "bad" / "nla_meta.yaml").read_text())
    meta["role"] = "critic"
    (tmp_path / "bad" / "nla_meta.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(NLAError, match="not an AV"):
        ActivationVerbalizer.from_pretrained(tmp_path / "bad")


def test_wrong_vector_width_is_one_clear_error() -> None:
    av = _av()
    with pytest.raises(NLAError, match="shape"):
        av.generate(torch.randn(2, av.d_model + 1))


@pytest.mark.slow
def test_untrained_smollm2_av_writes_english_with_a_real_vector(smollm2) -> None:
    ids = smollm2.tokenizer(["Paris is the capital of France, and its museums attract visitors."], return_tensors="pt")
    v = smollm2.hidden_at(ids.input_ids, ids.attention_mask, 20)[0, -2:]  # (2, 576)
    av = ActivationVerbalizer.from_target(smollm2, injection_scale=250.0, layer=20)
    assert av.prompt_ids().count(av.marker.token_id) == 1
    out = [r[0] for r in av.generate(v, max_new_tokens=8)]
    assert all(len(o.strip()) > 0 for o in out) and not injection_failed(out)
    nll = av.nll(v, ["<explanation>The text is about Paris.</explanation>"] * 2)
    assert torch.isfinite(nll).all() and not torch.allclose(nll[0], nll[1])  # the vector reaches the model
