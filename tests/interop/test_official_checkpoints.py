"""Checkpoints shaped like the official code's (training-time, release, docs example) load in nla."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from interop.official_fixtures import (
    OFFICIAL_CRITIC_TEMPLATE,
    docs_ar_sidecar,
    release_sidecar,
    suffix_ids,
    training_sidecar,
    write_yaml,
)
from nla.common import meta
from nla.common.errors import NLAError
from nla.core.inject import choose_marker
from nla.explain.api import NLA
from nla.models.ar import ActivationReconstructor
from nla.models.av import ActivationVerbalizer
from nla.models.target import load_target

from helpers import save_tiny_target

ACTOR = "Explain the concept <concept>{injection_char}</concept> please."
LAYER = 1


def _pair(root: Path) -> tuple[Path, Path, dict, dict]:
    """A tiny AV (full model, 3 blocks) and AR (2 blocks + head) in the official layout, training-time sidecars."""
    av_dir, ar_dir = root / "av", root / "ar"
    save_tiny_target(av_dir, "qwen2")
    t = load_target(str(av_dir))
    marker = choose_marker(t.tokenizer, ACTOR)
    ar = ActivationReconstructor.from_target(t, LAYER, template=OFFICIAL_CRITIC_TEMPLATE)
    ar._save_backbone(ar_dir)
    t.tokenizer.save_pretrained(ar_dir)
    save_file({"weight": torch.randn(64, 64) / 8}, str(ar_dir / "value_head.safetensors"))
    common = dict(d_model=64, marker=marker, actor_template=ACTOR, critic_template=OFFICIAL_CRITIC_TEMPLATE)
    suffix = suffix_ids(t.tokenizer, OFFICIAL_CRITIC_TEMPLATE)
    actor = training_sidecar("actor", **common, critic_suffix=None, injection_scale=12.0, critic_layer=None)
    critic = training_sidecar("critic", **common, critic_suffix=suffix, injection_scale=None, critic_layer=LAYER)
    return av_dir, ar_dir, actor, critic


def test_layer_index_reads_every_place_and_refuses_disagreement() -> None:
    assert meta.layer_index({"extraction": {"layer_index": 4}}) == 4
    assert meta.layer_index({"extraction_layer_index": 5}) == 5
    assert meta.layer_index({"critic": {"extraction_layer_index": 6}}) == 6
    assert meta.layer_index({"critic": {"num_hidden_layers": 7}}) == 7  # schema 1 stored L under this name
    assert meta.layer_index({"ar": {"num_hidden_layers": 8}}) == 8  # docs/inference.md
    # nla before 2026-12 wrote num_hidden_layers = L + 1 beside extraction_layer_index: the latter wins
    assert meta.layer_index({"critic": {"extraction_layer_index": 20, "num_hidden_layers": 21}}) == 20
    assert meta.layer_index({"kind": "nla_model"}) is None
    with pytest.raises(NLAError, match="different layers"):
        meta.layer_index({"extraction": {"layer_index": 3}, "extraction_layer_index": 4})
    with pytest.raises(NLAError, match="integer"):
        meta.layer_index({"extraction_layer_index": "twenty"})


def test_suffix_conventions() -> None:
    assert meta.suffix_matches([5, 6, 7], [5, 6, 7])  # nla's full suffix
    assert meta.suffix_matches([6, 7], [5, 6, 7])  # the official tail
    assert not meta.suffix_matches([5, 6], [5, 6, 7]) and not meta.suffix_matches([7], [5, 6, 7])
    assert meta.official_suffix_ids([5, 6, 7]) == [6, 7]


def test_training_time_pair_loads_without_suffix_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    av_dir, ar_dir, actor, critic = _pair(tmp_path)
    write_yaml(av_dir / "nla_meta.yaml", actor)
    write_yaml(ar_dir / "nla_meta.yaml", critic)
    with caplog.at_level(logging.WARNING):
        ar = ActivationReconstructor.from_pretrained(ar_dir)
    assert ar.layer == LAYER and ar.template == OFFICIAL_CRITIC_TEMPLATE
    assert not [r for r in caplog.records if "critic_suffix_ids" in r.getMessage()]
    av = ActivationVerbalizer.from_pretrained(av_dir)
    assert av.injection_scale == 12.0 and av.template == ACTOR
    assert av.layer == -1 and av.base_model == "/checkpoints/base"  # a training-time actor states no layer
    nla = NLA.from_pretrained(str(av_dir), str(ar_dir), with_target=False)  # the pair's layer: the critic's
    assert nla.layer == LAYER and len(nla.explain_vectors(torch.randn(1, 64), max_new_tokens=3, best_of=1)) == 1


def test_a_wrong_suffix_still_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, ar_dir, _, critic = _pair(tmp_path)
    critic["tokens"]["critic_suffix_ids"] = [3, 3, 3]
    write_yaml(ar_dir / "nla_meta.yaml", critic)
    with caplog.at_level(logging.WARNING):
        ActivationReconstructor.from_pretrained(ar_dir)
    assert [r for r in caplog.records if "critic_suffix_ids" in r.getMessage()]


@pytest.mark.parametrize("keep_critic", [True, False])
def test_release_pair_loads_and_explains(tmp_path: Path, keep_critic: bool) -> None:
    av_dir, ar_dir, actor, critic = _pair(tmp_path)
    write_yaml(av_dir / "nla_meta.yaml", release_sidecar(actor, base_model="Org/Base", layer=LAYER), release=True)
    rel_ar = release_sidecar(critic, base_model="Org/Base", layer=LAYER, keep_critic=keep_critic)
    write_yaml(ar_dir / "nla_meta.yaml", rel_ar, release=True)
    av = ActivationVerbalizer.from_pretrained(av_dir)
    ar = ActivationReconstructor.from_pretrained(ar_dir)
    assert (av.layer, ar.layer, av.base_model, ar.base_model) == (LAYER, LAYER, "Org/Base", "Org/Base")
    nla = NLA.from_pretrained(str(av_dir), str(ar_dir), with_target=False)  # no "layer mismatch"
    out = nla.explain_vectors(torch.randn(2, 64), max_new_tokens=4, best_of=1)
    assert len(out) == 2 and all(r.cosine is not None for r in out)


def test_docs_example_and_layerless_ar_sidecars(tmp_path: Path) -> None:
    _, ar_dir, _, _ = _pair(tmp_path)
    tok = load_target(str(tmp_path / "av")).tokenizer
    docs = docs_ar_sidecar(d_model=64, layer=LAYER, critic_suffix=suffix_ids(tok, OFFICIAL_CRITIC_TEMPLATE))
    write_yaml(ar_dir / "nla_meta.yaml", docs)
    assert ActivationReconstructor.from_pretrained(ar_dir).layer == LAYER
    del docs["ar"]  # no layer anywhere: the truncated config.json (L + 1 blocks) says it
    write_yaml(ar_dir / "nla_meta.yaml", docs)
    assert ActivationReconstructor.from_pretrained(ar_dir).layer == LAYER
