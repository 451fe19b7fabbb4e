"""``nla export --format official``: merged checkpoints, official sidecars, configs for transformers 4.5x and 5.x."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from nla.cli import main
from nla.common.errors import NLAError
from nla.export_official import config_for_both, export_official, tokenizer_config_for_both
from nla.models.ar import ActivationReconstructor
from nla.models.av import ActivationVerbalizer
from nla.models.lora import apply_lora, is_lora
from nla.models.target import load_target

from helpers import save_tiny_target

RESPONSES = ["<explanation>a fox</explanation>", "<explanation>code</explanation>"]
TEXTS = ["the capital of France", "pasta."]


def test_config_for_both_writes_rope_in_both_forms() -> None:
    v5 = {"rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}, "dtype": "float32", "_name_or_path": "x"}
    out = config_for_both(v5)
    assert out["rope_theta"] == 100000.0 and out["rope_parameters"] == v5["rope_parameters"]
    assert out["torch_dtype"] == "float32" and "_name_or_path" not in out and "rope_scaling" not in out
    scaled = config_for_both({"rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}})
    assert scaled["rope_theta"] == 5e5 and scaled["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0}
    legacy = config_for_both({"rope_theta": 1e6, "text_config": {"rope_parameters": {"rope_theta": 1e4}}})
    assert legacy["rope_parameters"] == {"rope_type": "default", "rope_theta": 1e6}
    assert legacy["text_config"]["rope_theta"] == 1e4


def test_tokenizer_config_for_both() -> None:
    v5 = {"backend": "tokenizers", "tokenizer_class": "TokenizersBackend", "bos_token": "<s>", "is_local": True,
          "extra_special_tokens": ["<a>"]}  # fmt: skip
    out = tokenizer_config_for_both(v5, chat_template="{{ x }}", bos_prepended=False)
    assert out == {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None,
                   "additional_special_tokens": ["<a>"], "chat_template": "{{ x }}"}  # fmt: skip
    kept = tokenizer_config_for_both({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>"}, chat_template=None,
                                     bos_prepended=True)  # fmt: skip
    assert kept == {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>"}


def _pair(tmp_path: Path, *, lora: bool) -> tuple[ActivationVerbalizer, ActivationReconstructor]:
    base = str(save_tiny_target(tmp_path / "base", "llama"))
    t = load_target(base)
    av = ActivationVerbalizer.from_target(t, injection_scale=5.0, layer=1)
    ar = ActivationReconstructor.from_target(t, 1)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        ar.head.weight.add_(0.1 * torch.randn(64, 64, generator=g))
        if lora:
            av.model = apply_lora(av.model, r=2, alpha=4)
            for name, p in av.model.named_parameters():
                if "lora_B" in name:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
        else:
            for p in av.model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g))
    av.save_pretrained(tmp_path / "av")
    ar.save_pretrained(tmp_path / "ar")
    return av, ar


@pytest.mark.parametrize("lora", [False, True])
def test_export_official_reloads_identically_and_states_the_whole_contract(tmp_path: Path, lora: bool) -> None:
    av, ar = _pair(tmp_path, lora=lora)
    v = torch.randn(2, 64)
    export_official(tmp_path / "av", tmp_path / "ar", tmp_path / "out")
    out = tmp_path / "out"
    sides = {r: yaml.safe_load((out / r / "nla_meta.yaml").read_text()) for r in ("av", "ar")}
    for role, side in sides.items():
        assert side["kind"] == "nla_model" and side["schema_version"] == 2 and side["role"] == role
        assert side["extraction_layer_index"] == 1 == side["extraction"]["layer_index"]
        assert side["extraction"]["mse_scale"] == pytest.approx(8.0)
        assert set(side["tokens"]) == {"injection_char", "injection_token_id", "injection_left_neighbor_id",
                                       "injection_right_neighbor_id", "critic_suffix_ids"}  # fmt: skip
        assert side["tokens"]["injection_token_id"] == av.marker.token_id
        assert side["tokens"]["critic_suffix_ids"] == ar.suffix_ids()[1:]
        assert side["prompt_templates"] == {"av": av.template, "ar": ar.template}
        cfg = json.loads((out / role / "config.json").read_text())
        assert cfg["rope_theta"] == cfg["rope_parameters"]["rope_theta"]
        tok = json.loads((out / role / "tokenizer_config.json").read_text())
        assert tok["tokenizer_class"] == "PreTrainedTokenizerFast" and "chat_template" in tok
    assert sides["av"]["extraction"]["injection_scale"] == 5.0 and sides["ar"]["extraction"]["injection_scale"] is None
    assert sides["ar"]["critic"] == {"extraction_layer_index": 1} and "critic" not in sides["av"]
    assert not (out / "av" / "adapter_config.json").exists()  # merged, full weights
    assert json.loads((out / "ar" / "config.json").read_text())["num_hidden_layers"] == 2
    av2 = ActivationVerbalizer.from_pretrained(out / "av")
    assert not is_lora(av2.model) and av2.marker == av.marker and av2.layer == 1
    torch.testing.assert_close(av2.nll(v, RESPONSES), av.nll(v, RESPONSES), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ActivationReconstructor.from_pretrained(out / "ar").predict(TEXTS), ar.predict(TEXTS))


def test_the_official_critic_recipe_reproduces_the_ar(tmp_path: Path) -> None:
    """NLACritic's steps (CausalLM load, final norm and LM head replaced by identity, value_head.safetensors,
    add_special_tokens=True, last token) on the export give nla's prediction."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, ar = _pair(tmp_path, lora=False)
    export_official(tmp_path / "av", tmp_path / "ar", tmp_path / "out")
    path = tmp_path / "out" / "ar"
    side = yaml.safe_load((path / "nla_meta.yaml").read_text())
    tok = AutoTokenizer.from_pretrained(str(path))
    probe = tok("x", add_special_tokens=True)["input_ids"]
    assert tok.bos_token_id is None or probe[0] == tok.bos_token_id  # the critic's BOS assertion
    lm = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    lm.lm_head, lm.model.norm = torch.nn.Identity(), torch.nn.Identity()
    head = torch.nn.Linear(64, 64, bias=False)
    head.load_state_dict(load_file(str(path / "value_head.safetensors")))
    for text in TEXTS:
        ids = tok(side["prompt_templates"]["ar"].format(explanation=text), return_tensors="pt")["input_ids"]
        with torch.no_grad():
            pred = head(lm.model(ids, use_cache=False).last_hidden_state[0, -1])
        torch.testing.assert_close(pred, ar.predict([text])[0], atol=1e-5, rtol=1e-5)
    assert float(side["extraction"]["mse_scale"]) == pytest.approx(8.0)  # NLACritic: float(mse_scale)


def test_export_refuses_what_the_official_contract_cannot_state(tmp_path: Path) -> None:
    base = str(save_tiny_target(tmp_path / "base", "llama"))
    t = load_target(base)
    ActivationVerbalizer.from_target(t, injection_scale=5.0, layer=1).save_pretrained(tmp_path / "av")
    ActivationReconstructor.from_target(t, 2).save_pretrained(tmp_path / "ar")
    with pytest.raises(NLAError, match="layer mismatch"):
        export_official(tmp_path / "av", tmp_path / "ar", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    ActivationVerbalizer.from_target(t, injection_scale=None, layer=2).save_pretrained(tmp_path / "raw")
    with pytest.raises(NLAError, match="numeric injection_scale"):
        export_official(tmp_path / "raw", tmp_path / "ar", tmp_path / "out")


def test_cli_export_official(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _pair(tmp_path, lora=False)
    code = main(["export", "--format", "official", "--av", str(tmp_path / "av"), "--ar", str(tmp_path / "ar"),
                 "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 0 and "official layout" in capsys.readouterr().out
    assert (tmp_path / "out" / "ar" / "value_head.safetensors").exists()
    assert main(["export", "--format", "official", "--av", str(tmp_path / "av")]) == 2
    assert "nla: error: --out is required" in capsys.readouterr().err
