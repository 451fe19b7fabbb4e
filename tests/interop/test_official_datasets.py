"""Datasets written by the official code train and evaluate in nla; ``nla extract`` output passes its reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from interop.official_fixtures import (
    OFFICIAL_CRITIC_TEMPLATE,
    dataset_sidecar,
    official_reader_accepts,
    suffix_ids,
    write_stage_parquet,
)
from nla.common.errors import NLAError
from nla.core.inject import choose_marker
from nla.data.activations import load_vectors
from nla.data.extract import ExtractConfig, extract
from nla.data.official import unwrap
from nla.models.av import ActivationVerbalizer
from nla.models.target import load_target
from nla.train.ar import ARTrainConfig, load_ar_data, train_ar
from nla.train.av import AVTrainConfig, load_av_data, train_av

from helpers import save_tiny_target

WORDS = ["fox", "Paris", "code", "pasta", "capital", "four", "lazy", "Berlin"]
ACTOR = "Describe <concept>{injection_char}</concept> in a few words."


def _texts(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (3,), generator=g).tolist()) + "." for _ in range(n)]


def _vectors(n: int, seed: int) -> list[list[float]]:
    return torch.randn(n, 64, generator=torch.Generator().manual_seed(seed)).tolist()


def test_unwrap_inverts_the_template() -> None:
    assert unwrap(OFFICIAL_CRITIC_TEMPLATE.format(explanation="a b."), OFFICIAL_CRITIC_TEMPLATE) == "a b."
    assert unwrap("something else", OFFICIAL_CRITIC_TEMPLATE) is None


def test_stage2_and_ar_sft_give_the_same_explanations(tmp_path: Path) -> None:
    texts, vecs = _texts(6, 0), _vectors(6, 0)
    custom = "Text: <text>{explanation}</text> =>"
    s2 = dataset_sidecar("base", base_model="m", d_model=64, layer=1, rows=6)
    ar = dataset_sidecar("ar_sft", base_model="m", d_model=64, layer=1, rows=6, templates={"critic": custom})
    p2 = write_stage_parquet(tmp_path / "s2.parquet", "stage2", vecs, texts, s2)
    par = write_stage_parquet(tmp_path / "ar.parquet", "ar_sft", vecs, texts, ar)
    for path in (p2, par):
        data = load_ar_data(path)
        assert data.explanations == texts and data.vectors.shape == (6, 64)
        assert load_vectors(path).explanations == texts
    av = load_av_data(p2)  # stage-2 output trains an AV too: the response is built from api_explanation
    assert av.responses[0] == f"<explanation>{texts[0]}</explanation>" and av.template is None
    ar["prompt_templates"]["critic"] = "Other: {explanation}"  # a template the prompts do not fit
    (tmp_path / "ar.parquet.nla_meta.yaml").write_text(yaml.safe_dump(ar))
    with pytest.raises(NLAError, match="no prompt fits"):
        load_ar_data(par)


def test_train_ar_runs_on_an_official_ar_sft_dataset(tmp_path: Path) -> None:
    base = str(save_tiny_target(tmp_path / "base", "llama"))
    tok = load_target(base).tokenizer
    custom = "Text: <text>{explanation}</text> =>"
    paths = []
    for name, seed, n in (("train", 1, 16), ("eval", 2, 6)):
        side = dataset_sidecar("ar_sft", base_model=base, d_model=64, layer=1, rows=n, templates={"critic": custom})
        side["tokens"] = {"critic_suffix_ids": suffix_ids(tok, custom)}
        write_stage_parquet(
            tmp_path / f"{name}.parquet", "ar_sft", _vectors(n, seed), _texts(n, seed), side, doc_prefix=name
        )
        paths.append(tmp_path / f"{name}.parquet")
    out = tmp_path / "run"
    cfg = ARTrainConfig(data=str(paths[0]), eval_data=str(paths[1]), out_dir=str(out), max_steps=3, batch_size=4,
                        lr=1e-3, warmup_steps=1, eval_every=3, save_every=3)  # fmt: skip
    res = train_ar(cfg)
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 3 and all(x == x for x in losses)  # finite
    assert res.final_eval and "fve_nrm" in res.final_eval
    final = yaml.safe_load((out / "final" / "nla_meta.yaml").read_text())
    assert final["prompt_templates"]["ar"] == custom and final["critic"]["extraction_layer_index"] == 1


def test_train_av_uses_the_official_instruction_and_marker(tmp_path: Path) -> None:
    base = str(save_tiny_target(tmp_path / "base", "llama"))
    marker = choose_marker(load_target(base).tokenizer, ACTOR)
    tokens = {
        "injection_char": marker.char,
        "injection_token_id": marker.token_id,
        "injection_left_neighbor_id": marker.left_neighbor_id,
        "injection_right_neighbor_id": marker.right_neighbor_id,
        "critic_suffix_ids": None,
    }
    side = dataset_sidecar("av_sft", base_model=base, d_model=64, layer=1, rows=8, tokens=tokens,
                           templates={"actor": ACTOR, "critic": OFFICIAL_CRITIC_TEMPLATE})  # fmt: skip
    prompt = ACTOR.format(injection_char="<INJECT>")
    path = write_stage_parquet(tmp_path / "av.parquet", "av_sft", _vectors(8, 3), _texts(8, 3), side, prompt=prompt)
    data = load_av_data(path)
    assert data.template == ACTOR and data.marker == marker
    assert data.responses[0].startswith("<explanation>\n") and data.responses[0].endswith("\n</explanation>")
    av, _ = train_av(AVTrainConfig(data=str(path), out_dir=str(tmp_path / "run"), max_steps=2, batch_size=4,
                                   eval_fraction=0.25, samples=0, injection_scale=8.0))  # fmt: skip
    assert av.template == ACTOR and av.marker == marker and av.layer == 1
    again = ActivationVerbalizer.from_pretrained(tmp_path / "run" / "final")
    assert again.template == ACTOR and again.marker == marker
    side["prompt_templates"]["actor"] = "Something <concept>{injection_char}</concept> else."
    (tmp_path / "av.parquet.nla_meta.yaml").write_text(yaml.safe_dump(side, allow_unicode=True))
    with pytest.raises(NLAError, match="differ"):
        load_av_data(path)


def test_nla_extract_sidecars_pass_the_official_reader(tmp_path: Path, tiny_target) -> None:
    from nla.data.documents import Document

    docs = [Document(f"d{i}", text=" ".join(WORDS * 3)) for i in range(6)]
    cfg = ExtractConfig(
        out=str(tmp_path / "acts"), skip=2, positions_per_doc=2, chunk_docs=4, batch_tokens=256, layer=1
    )
    extract(cfg, tiny_target, documents=docs)
    sidecars = sorted((tmp_path / "acts").glob("*/part-*.parquet.nla_meta.yaml"))
    assert sidecars
    for path in sidecars:
        side = yaml.safe_load(path.read_text())
        official_reader_accepts(side)
        assert side["stage"] == "base" and side["extraction"]["d_model"] == 64
        assert side["extraction"]["layer_index"] == 1 and side["extraction"]["norm"] == "none"
    with pytest.raises(TypeError):  # the restated reader does reject what nla wrote before
        official_reader_accepts({**side, "extraction": {**side["extraction"], "mse_scale": "sqrt_d_model"}})
