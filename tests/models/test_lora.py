from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from nla.common.errors import NLAError
from nla.models.lora import ADAPTER_CONFIG, apply_lora, is_lora, load_adapter, merge_adapter, save_adapter

from helpers import tiny_model


def _trained_adapter(path: Path, **kw) -> Path:
    """A tiny llama with a random (non-zero) adapter and trained norms, saved as an adapter directory."""
    model = apply_lora(tiny_model("llama", seed=1), r=4, alpha=8, modules_to_save=["input_layernorm", "norm"], **kw)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.normal_(0, 0.5)
    save_adapter(model, path)
    return path


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_merge_adapter_equals_peft_merge_bit_for_bit(tmp_path: Path, dtype: torch.dtype) -> None:
    """Also for an adapter saved in float16 (what `nla export` ships): peft loads it into the fp32 model's
    adapter weights and multiplies B @ A in fp32, so the merge must upcast before the product too."""
    from safetensors.torch import load_file, save_file

    path = _trained_adapter(tmp_path / "adapter")
    weights = path / "adapter_model.safetensors"
    save_file({k: v.to(dtype) for k, v in load_file(str(weights)).items()}, str(weights))
    want = load_adapter(tiny_model("llama", seed=1), path).merge_and_unload().state_dict()
    got = merge_adapter(tiny_model("llama", seed=1), path)
    assert not is_lora(got)
    state = got.state_dict()
    assert state.keys() == want.keys()
    changed = [k for k in want if not torch.equal(want[k], tiny_model("llama", seed=1).state_dict()[k])]
    assert any("q_proj" in k for k in changed) and any("input_layernorm" in k for k in changed)  # both kinds
    for k in want:
        assert torch.equal(state[k], want[k]), k


def test_merge_adapter_rslora_and_fallback(tmp_path: Path) -> None:
    path = _trained_adapter(tmp_path / "rs")
    cfg = json.loads((path / ADAPTER_CONFIG).read_text())
    cfg["use_rslora"] = True  # scale alpha / sqrt(r)
    (path / ADAPTER_CONFIG).write_text(json.dumps(cfg))
    want = load_adapter(tiny_model("llama", seed=1), path).merge_and_unload().state_dict()
    got = merge_adapter(tiny_model("llama", seed=1), path).state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    cfg["alpha_pattern"] = {"q_proj": 2.0}  # a feature the fast path leaves to peft
    (path / ADAPTER_CONFIG).write_text(json.dumps(cfg))
    want = load_adapter(tiny_model("llama", seed=1), path).merge_and_unload().state_dict()
    got = merge_adapter(tiny_model("llama", seed=1), path).state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_merge_adapter_rejects_an_adapter_of_another_model(tmp_path: Path) -> None:
    path = _trained_adapter(tmp_path / "adapter")
    with pytest.raises(NLAError, match="does not fit the model"):
        merge_adapter(tiny_model("llama", d=32), path)
    with pytest.raises(NLAError, match="holds no LoRA adapter"):
        merge_adapter(tiny_model("llama"), tmp_path)


def test_is_lora_does_not_import_peft(monkeypatch) -> None:
    monkeypatch.delitem(sys.modules, "peft", raising=False)
    assert not is_lora(tiny_model("llama"))
    assert "peft" not in sys.modules
