from __future__ import annotations

import pytest
import torch

from nla.cli import main
from nla.common.errors import NLAError
from nla.models.target import default_layer, load_target

from helpers import save_tiny_target, tiny_target


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_hidden_at_matches_hf_hidden_states(arch: str) -> None:
    t = tiny_target(arch)
    ids = t.tokenizer(["hello world, the quick brown fox", "Paris"], return_tensors="pt", padding=True)
    with torch.no_grad():
        full = t.model(**ids, output_hidden_states=True).hidden_states
    for layer in range(t.n_layers - 1):  # the last hidden state is post-norm in HF
        got = t.hidden_at(ids.input_ids, ids.attention_mask, layer)
        torch.testing.assert_close(got, full[layer + 1])


def test_hidden_at_never_runs_later_blocks() -> None:
    t = tiny_target("llama")
    ran = []
    for i, block in enumerate(t.layers):
        block.register_forward_hook(lambda *_a, i=i: ran.append(i))
    ids = t.tokenizer("hello world", return_tensors="pt")
    t.hidden_at(ids.input_ids, ids.attention_mask, 1)
    assert ran == [0, 1]


def test_gemma_embed_scale_is_exposed() -> None:
    t = tiny_target("gemma3")
    assert t.embed_scale == pytest.approx(64**0.5)
    assert tiny_target("llama").embed_scale == 1.0


def test_default_layer_is_two_thirds() -> None:
    assert default_layer(30) == 20
    assert default_layer(28) == 19


def test_load_local_directory(tmp_path) -> None:
    save_tiny_target(tmp_path / "m", "qwen2")
    t = load_target(str(tmp_path / "m"))
    assert (t.d_model, t.n_layers) == (64, 3)
    assert t.tokenizer.pad_token is not None
    with pytest.raises(NLAError, match="out of range"):
        t.check_layer(3)


def test_unknown_model_is_one_clear_error(tmp_path, capsys) -> None:
    with pytest.raises(NLAError, match="unknown model"):
        load_target(str(tmp_path / "nope"))
    assert main(["info", "--model", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nla: error:")


@pytest.mark.slow
def test_embedded_smollm2_loads_fast_from_cache(smollm2) -> None:
    import time

    assert (smollm2.d_model, smollm2.n_layers, smollm2.default_layer) == (576, 30, 20)
    t0 = time.perf_counter()
    again = load_target("smollm2-135m")
    assert time.perf_counter() - t0 < 5.0  # issue asks < 2 s; slack for a loaded CI machine
    assert again.chat_template and "<|im_start|>" in again.chat_template


def test_tokenizer_loads_once_and_each_caller_gets_its_own_settings(tmp_path) -> None:
    from nla.models.target import _loaded_tokenizer, load_tokenizer

    path = save_tiny_target(tmp_path / "m", "llama")
    _loaded_tokenizer.cache_clear()
    a, b = load_tokenizer(str(path)), load_tokenizer(str(path))
    assert _loaded_tokenizer.cache_info().misses == 1 and a is not b
    a.padding_side = "left" if b.padding_side == "right" else "right"
    assert load_tokenizer(str(path)).padding_side == b.padding_side  # a change to one copy stays there
    assert a.encode("hello world") == b.encode("hello world")
    a.pad_token = a.bos_token
    assert load_tokenizer(str(path)).pad_token == b.pad_token != a.pad_token
    assert a._tokenizer is b._tokenizer  # the vocabulary is shared (deep copies took seconds for Gemma's)
    padded = a(["hello", "hello world"], padding=True).input_ids  # padding set on the shared backend ...
    assert b("hello").input_ids == a("hello").input_ids and len(padded[0]) == len(padded[1])  # ... per call
    a.add_tokens(["<new-token>"])
    a.save_pretrained(str(path))  # the directory's tokenizer is rewritten: it loads again
    assert len(load_tokenizer(str(path))) == len(a)
    assert _loaded_tokenizer.cache_info().misses == 2
