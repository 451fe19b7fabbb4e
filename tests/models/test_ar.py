from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from nla.common.errors import NLAError
from nla.common.meta import DEFAULT_AR_TEMPLATE
from nla.models.ar import VALUE_HEAD, ActivationReconstructor, last_token_index
from nla.models.target import load_target

from helpers import save_tiny_target, tiny_config, tiny_target, tiny_tokenizer

TEXTS = ["The token is a comma in a list of fruits.", "Paris", "def add(a, b): return a + b"]


def _last_hidden(t, ar: ActivationReconstructor, texts: list[str], layer: int) -> torch.Tensor:  # -> (B, d)
    enc = ar.tokenize(texts)
    with torch.no_grad():
        hs = t.model(**enc, output_hidden_states=True).hidden_states[layer + 1]  # (B, T, d)
    return hs[torch.arange(len(texts)), last_token_index(enc["attention_mask"])]


def test_last_token_index_left_and_right_padding() -> None:
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1], [1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 3, 3]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_untrained_ar_returns_the_target_activation(arch: str) -> None:
    t = tiny_target(arch)
    n_before = len(t.layers)
    for layer in (0, 1):
        ar = ActivationReconstructor.from_target(t, layer)
        assert len(ar.backbone.layers) == ar.backbone.config.num_hidden_layers == layer + 1
        got = ar.predict(TEXTS)
        torch.testing.assert_close(got, _last_hidden(t, ar, TEXTS, layer), rtol=1e-5, atol=1e-5)
        ar.tokenizer.padding_side = "left"
        torch.testing.assert_close(ar.predict(TEXTS), got, rtol=1e-4, atol=1e-4)
    assert len(t.layers) == n_before and t.model.config.num_hidden_layers == n_before


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_an_ar_that_takes_its_target_equals_one_that_copies_it(arch: str) -> None:
    copied = ActivationReconstructor.from_target(tiny_target(arch), 1)
    t = tiny_target(arch)
    taken = ActivationReconstructor.from_target(t, 1, take=True)  # from_pretrained's way: no copy of the weights
    assert taken.backbone is t.model.model and len(taken.backbone.layers) == 2
    torch.testing.assert_close(taken.predict(TEXTS), copied.predict(TEXTS), rtol=0, atol=0)


def test_training_the_ar_leaves_the_target_untouched() -> None:
    t = tiny_target("llama")
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    ar = ActivationReconstructor.from_target(t, 1)
    assert all(p.requires_grad for p in ar.parameters())
    enc = ar.tokenize(TEXTS)
    ar(enc["input_ids"], enc["attention_mask"]).pow(2).sum().backward()
    with torch.no_grad():
        for p in ar.parameters():
            p.add_(1.0)
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_save_load_round_trip_official_layout(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    ar = ActivationReconstructor.from_target(tiny_target("qwen2"), 1, template="Explain: {explanation} =>")
    with torch.no_grad():
        ar.head.weight.add_(0.01 * torch.randn_like(ar.head.weight))
    ar.save_pretrained(tmp_path / "ar")
    files = {p.name for p in (tmp_path / "ar").iterdir()}
    assert {"config.json", "model.safetensors", VALUE_HEAD, "nla_meta.yaml", "tokenizer.json"} <= files
    head = load_file(str(tmp_path / "ar" / VALUE_HEAD))
    assert list(head) == ["weight"] and head["weight"].shape == (64, 64)
    meta = yaml.safe_load((tmp_path / "ar" / "nla_meta.yaml").read_text())
    assert (meta["kind"], meta["role"], meta["d_model"]) == ("nla_model", "ar", 64)
    assert (
        meta["critic"]["extraction_layer_index"] == 1 and meta["prompt_templates"]["ar"] == "Explain: {explanation} =>"
    )
    # the official convention: the suffix tokens without the first (it can merge with the explanation)
    assert meta["tokens"]["critic_suffix_ids"] == ar.tokenizer(" =>", add_special_tokens=False)["input_ids"][1:]
    loaded = ActivationReconstructor.from_pretrained(tmp_path / "ar")
    assert loaded.backbone.config.num_hidden_layers == 2 and loaded.template == ar.template
    assert torch.equal(loaded.predict(TEXTS), ar.predict(TEXTS))


def test_lora_trains_only_adapters_and_head_and_round_trips(tmp_path: Path) -> None:
    base = str(save_tiny_target(tmp_path / "base", "llama"))
    ar = ActivationReconstructor.from_target(load_target(base), 1)
    ar.enable_lora(r=4, alpha=8)
    trainable = [n for n, p in ar.named_parameters() if p.requires_grad]
    assert "head.weight" in trainable and all("lora_" in n for n in trainable if n != "head.weight")
    assert len(trainable) == 1 + 2 * 7 * 2  # head + A/B for 7 projections in 2 blocks
    ar.train()
    opt = torch.optim.SGD([p for p in ar.parameters() if p.requires_grad], lr=0.5)
    enc = ar.tokenize(TEXTS)
    for _ in range(2):
        opt.zero_grad()
        ar(enc["input_ids"], enc["attention_mask"]).sum().backward()
        opt.step()
    want = ar.predict(TEXTS)
    assert not torch.allclose(want, ActivationReconstructor.from_target(load_target(base), 1).predict(TEXTS))
    ar.save_pretrained(tmp_path / "merged")
    ar.save_pretrained(tmp_path / "adapter", adapter_only=True)
    assert not (tmp_path / "adapter" / "model.safetensors").exists()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size < (
        tmp_path / "merged" / "model.safetensors"
    ).stat().st_size
    merged = ActivationReconstructor.from_pretrained(tmp_path / "merged")
    adapter = ActivationReconstructor.from_pretrained(tmp_path / "adapter")
    assert adapter.has_lora and not merged.has_lora
    torch.testing.assert_close(merged.predict(TEXTS), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(adapter.predict(TEXTS), want, rtol=1e-5, atol=1e-5)
    assert adapter.for_inference() is adapter and not adapter.has_lora  # merged for scoring only
    torch.testing.assert_close(adapter.predict(TEXTS), want, rtol=1e-5, atol=1e-5)
    on_load = ActivationReconstructor.from_pretrained(tmp_path / "adapter", merged=True)  # merged as it loads
    assert not on_load.has_lora and torch.equal(on_load.predict(TEXTS), adapter.predict(TEXTS))
    assert not any(p.requires_grad for p in adapter.parameters())
    again = ActivationReconstructor.from_pretrained(tmp_path / "adapter", trainable=True)
    assert {n for n, p in again.named_parameters() if p.requires_grad} == set(trainable)
    full = ActivationReconstructor.from_pretrained(tmp_path / "merged", trainable=True)
    assert all(p.requires_grad for p in full.parameters())


def _fabricate_official(path: Path, layer: int = 1) -> tuple[torch.Tensor, str]:
    """An official-style training-time AR: a Qwen2 causal-LM directory with L+1 blocks, role critic."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    cfg = tiny_config("qwen2", vocab_size=len(tok), n_layers=layer + 1)
    torch.manual_seed(7)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    w = torch.randn(64, 64) / 8
    save_file({"weight": w}, str(path / "value_head.safetensors"))
    template = "Text: <text>{explanation}</text> <summary>"
    meta = {
        "kind": "nla_model",
        "role": "critic",
        "d_model": 64,
        "extraction": {"base_model": "Qwen/tiny", "layer_index": layer, "mse_scale": "sqrt_d_model"},
        "prompt_templates": {"critic": template},
        "tokens": {"critic_suffix_ids": tok("</text> <summary>", add_special_tokens=False)["input_ids"]},
        "critic": {"extraction_layer_index": layer},
    }
    (path / "nla_meta.yaml").write_text(yaml.safe_dump(meta))
    return w, template


def test_fabricated_official_checkpoint_loads_and_predicts(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    w, template = _fabricate_official(tmp_path / "official")
    ar = ActivationReconstructor.from_pretrained(tmp_path / "official")
    assert ar.template == template and ar.layer == 1
    pred = ar.predict(TEXTS)
    # by hand: pre-norm hidden state after both blocks at the last token, through the head
    lm = AutoModelForCausalLM.from_pretrained(tmp_path / "official").eval()
    enc = ar.tokenize(TEXTS)
    with torch.no_grad():
        hs = lm(**enc, output_hidden_states=True).hidden_states  # last entry is post-norm
        h = torch.stack([lm.model.layers[1](hs[1], **_layer_kwargs(lm, enc))[i, j] for i, j in
                         enumerate(last_token_index(enc["attention_mask"]).tolist())])  # fmt: skip
    torch.testing.assert_close(pred, h @ w.T, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(pred, lm.model.norm(h) @ w.T, atol=1e-3)  # the final norm is NOT applied


def _layer_kwargs(lm, enc) -> dict:
    """Arguments to call one Qwen2 block by hand (causal mask + rotary embeddings)."""
    from transformers.masking_utils import create_causal_mask

    embeds = lm.model.embed_tokens(enc["input_ids"])
    pos = torch.arange(embeds.shape[1]).unsqueeze(0)
    mask = create_causal_mask(config=lm.config, inputs_embeds=embeds, attention_mask=enc["attention_mask"],
                              past_key_values=None, position_ids=pos)  # fmt: skip
    return {
        "attention_mask": mask,
        "position_embeddings": lm.model.rotary_emb(embeds, pos),
        "position_ids": pos,
    }


def test_bad_checkpoints_give_one_clear_error(tmp_path: Path) -> None:
    _fabricate_official(tmp_path / "a")
    meta = yaml.safe_load((tmp_path / "a" / "nla_meta.yaml").read_text())
    (tmp_path / "a" / "nla_meta.yaml").write_text(yaml.safe_dump({**meta, "role": "actor"}))
    with pytest.raises(NLAError, match="not an activation reconstructor"):
        ActivationReconstructor.from_pretrained(tmp_path / "a")
    _fabricate_official(tmp_path / "b")
    (tmp_path / "b" / "value_head.safetensors").unlink()
    with pytest.raises(NLAError, match="value_head"):
        ActivationReconstructor.from_pretrained(tmp_path / "b")
    from safetensors.torch import save_file

    _fabricate_official(tmp_path / "c")
    save_file({"weight": torch.zeros(64, 32)}, str(tmp_path / "c" / "value_head.safetensors"))
    with pytest.raises(NLAError, match="shape"):
        ActivationReconstructor.from_pretrained(tmp_path / "c")
    with pytest.raises(NLAError, match="sidecar"):
        ActivationReconstructor.from_pretrained(tmp_path / "missing")
    ar = ActivationReconstructor.from_target(tiny_target("llama"), 0)
    with pytest.raises(NLAError, match="LoRA"):
        ar.save_pretrained(tmp_path / "x", adapter_only=True)
    assert not (tmp_path / "x").exists()
    with pytest.raises(NLAError, match="explanation"):
        ActivationReconstructor.from_target(tiny_target("llama"), 0, template="no placeholder")
    with pytest.raises(NLAError, match="out of range"):
        ActivationReconstructor.from_target(tiny_target("llama"), 3)


def test_max_length_cuts_the_explanation_not_the_template() -> None:
    ar = ActivationReconstructor.from_target(tiny_target("llama"), 0)
    suffix = ar.tokenizer(ar.suffix, add_special_tokens=False)["input_ids"]
    enc = ar.tokenize(["the quick brown fox " * 40, "short"], max_length=24)
    ids = enc["input_ids"][0].tolist()
    assert len(ids) <= 24 and ids[-len(suffix) :] == suffix
    assert ar.template == DEFAULT_AR_TEMPLATE


@pytest.mark.slow
def test_smollm2_ar_at_layer_20_matches_hidden_at(smollm2) -> None:
    ar = ActivationReconstructor.from_target(smollm2, 20)
    assert ar.d_model == 576 and len(ar.backbone.layers) == 21
    enc = ar.tokenize(TEXTS[:2])
    want = smollm2.hidden_at(enc["input_ids"], enc["attention_mask"], 20)  # (B, T, d)
    want = want[torch.arange(2), last_token_index(enc["attention_mask"])]
    torch.testing.assert_close(ar.predict(TEXTS[:2]), want, rtol=1e-4, atol=1e-3)
