"""``nla export``: SVD of fine-tuning deltas -> LoRA adapters that reload to the same model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nla.cli import main
from nla.common.errors import NLAError
from nla.export import export_nla, lowrank_factors
from nla.models.ar import ActivationReconstructor
from nla.models.av import ActivationVerbalizer
from nla.models.lora import is_lora
from nla.models.target import load_target

from helpers import save_tiny_target

TEXTS = ["<explanation>pasta</explanation>", "the capital of France", ""]
RESPONSES = ["<explanation>a fox</explanation>", "<explanation>code</explanation>"]


def test_lowrank_factors_exact_best_and_padded() -> None:
    torch.manual_seed(0)
    low = torch.randn(12, 2) @ torch.randn(2, 9)  # rank 2
    b, a, kept = lowrank_factors(low, 2)
    assert b.shape == (12, 2) and a.shape == (2, 9)
    torch.testing.assert_close(b @ a, low, atol=1e-5, rtol=1e-5)
    assert kept == pytest.approx(1.0)
    full = torch.randn(12, 9)
    s = torch.linalg.svdvals(full.double())
    b, a, kept = lowrank_factors(full, 3)
    assert kept == pytest.approx(float((s[:3] ** 2).sum() / (s**2).sum()), rel=1e-6)
    err = float((full - b @ a).norm() ** 2)  # Eckart-Young: the error is the dropped singular values
    assert err == pytest.approx(float((s[3:] ** 2).sum()), rel=1e-4)
    b, a, kept = lowrank_factors(torch.randn(3, 4), 8)  # rank above min(out, in): zero-padded
    assert b.shape == (3, 8) and a.shape == (8, 4) and kept == pytest.approx(1.0)
    b, a, kept = lowrank_factors(torch.zeros(5, 4), 2)
    assert kept == 1.0 and not b.any() and not a.any()


def _perturb(model: torch.nn.Module, *, embed: bool) -> None:
    """A rank-2 change to every 2-d decoder weight, a change to every norm, optionally to the embeddings."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "layers." in name:
                p.add_(0.05 * torch.randn(p.shape[0], 2, generator=g) @ torch.randn(2, p.shape[1], generator=g))
            elif p.ndim == 1:
                p.mul_(1.1)
            elif embed:
                p.add_(0.01)


def test_export_reloads_to_the_tuned_models(tmp_path: Path) -> None:
    base = str(save_tiny_target(tmp_path / "base", "llama"))
    av = ActivationVerbalizer.from_target(load_target(base), injection_scale=5.0, layer=1)
    _perturb(av.model, embed=False)
    av.save_pretrained(tmp_path / "av")
    ar = ActivationReconstructor.from_target(load_target(base), 1)
    _perturb(ar.backbone, embed=True)
    with torch.no_grad():
        ar.head.weight.mul_(0.5)
    ar.save_pretrained(tmp_path / "ar")
    v = torch.randn(2, av.d_model)

    rep = export_nla(tmp_path / "av", tmp_path / "ar", tmp_path / "small", rank=4, dtype="float32")
    assert rep.kept_energy["av"] == pytest.approx(1.0) and rep.kept_energy["ar"] == pytest.approx(1.0)
    assert rep.dropped["av"] == {} and list(rep.dropped["ar"]) == ["embed_tokens.weight"]
    assert not (tmp_path / "small" / "av" / "tokenizer.json").exists()  # taken from the base model
    small_av = ActivationVerbalizer.from_pretrained(tmp_path / "small" / "av")
    assert is_lora(small_av.model) and small_av.marker == av.marker
    torch.testing.assert_close(small_av.nll(v, RESPONSES), av.nll(v, RESPONSES), atol=1e-4, rtol=1e-4)
    small_ar = ActivationReconstructor.from_pretrained(tmp_path / "small" / "ar")
    assert small_ar.has_lora
    torch.testing.assert_close(small_ar.head.weight, ar.head.weight)
    # the dropped embedding change is the only difference: restore it and the outputs agree
    with torch.no_grad():
        small_ar.backbone.get_input_embeddings().weight.copy_(ar.backbone.get_input_embeddings().weight)
    torch.testing.assert_close(small_ar.predict(TEXTS), ar.predict(TEXTS), atol=1e-4, rtol=1e-4)

    rep16 = export_nla(tmp_path / "av", tmp_path / "ar", tmp_path / "half", rank=1)  # lossy, fp16 storage
    assert rep16.kept_energy["av"] < 1.0 and rep16.size_mib < rep.size_mib
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "half" / "av" / "adapter_model.safetensors"))
    assert {v.dtype for v in stored.values()} == {torch.float16}
    assert ActivationVerbalizer.from_pretrained(tmp_path / "half" / "av").model.dtype == torch.float32


def test_export_rejects_mismatched_pairs_and_leaves_nothing(tmp_path: Path) -> None:
    a = str(save_tiny_target(tmp_path / "a", "llama"))
    b = str(save_tiny_target(tmp_path / "b", "llama", seed=1))
    ActivationVerbalizer.from_target(load_target(a), injection_scale=5.0, layer=1).save_pretrained(tmp_path / "av")
    ActivationReconstructor.from_target(load_target(b), 1).save_pretrained(tmp_path / "ar")
    with pytest.raises(NLAError, match="based on"):
        export_nla(tmp_path / "av", tmp_path / "ar", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert main(["export", "--av", str(tmp_path / "av"), "--ar", str(tmp_path / "ar")]) == 2


def test_export_copies_adapters_and_exports_a_mixed_pair(tmp_path: Path) -> None:
    base = str(save_tiny_target(tmp_path / "base", "llama"))
    av = ActivationVerbalizer.from_target(load_target(base), injection_scale=5.0, layer=1)
    _perturb(av.model, embed=False)
    av.save_pretrained(tmp_path / "av")
    ar = ActivationReconstructor.from_target(load_target(base), 1)
    _perturb(ar.backbone, embed=False)
    ar.save_pretrained(tmp_path / "ar")
    export_nla(tmp_path / "av", tmp_path / "ar", tmp_path / "small", rank=4, dtype="float32")
    v = torch.randn(2, av.d_model)

    # both already adapters: copied and cast, not re-factorised
    rep = export_nla(tmp_path / "small" / "av", tmp_path / "small" / "ar", tmp_path / "again", rank=1)
    assert rep.kept_energy == {"av": 1.0, "ar": 1.0}
    again = ActivationVerbalizer.from_pretrained(tmp_path / "again" / "av")
    torch.testing.assert_close(again.nll(v, RESPONSES), av.nll(v, RESPONSES), atol=2e-3, rtol=2e-3)  # fp16 storage
    again_ar = ActivationReconstructor.from_pretrained(tmp_path / "again" / "ar")
    torch.testing.assert_close(again_ar.predict(TEXTS), ar.predict(TEXTS), atol=2e-2, rtol=2e-2)

    # an adapter AV beside a full AR: only the AR is factorised
    rep = export_nla(tmp_path / "small" / "av", tmp_path / "ar", tmp_path / "mixed", rank=4, dtype="float32")
    assert rep.kept_energy["av"] == 1.0 and rep.kept_energy["ar"] == pytest.approx(1.0)
    assert ActivationReconstructor.from_pretrained(tmp_path / "mixed" / "ar").has_lora
    torch.testing.assert_close(
        ActivationVerbalizer.from_pretrained(tmp_path / "mixed" / "av").nll(v, RESPONSES),
        av.nll(v, RESPONSES),
        atol=1e-4,
        rtol=1e-4,
    )
