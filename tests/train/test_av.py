from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from nla.cli import main
from nla.common.errors import NLAError
from nla.models.av import ActivationVerbalizer, default_injection_scale
from nla.train.av import AVTrainConfig, _batches, load_av_data, split_by_document, train_av

from helpers import save_tiny_target

PASTA = "The text is about cooking pasta."
PARIS = "Paris is the capital of France."


def _write(path, vectors: np.ndarray, explanations: list[str], *, doc_ids=None, d_model=None, column="explanation",
           layer: int = 1):  # fmt: skip
    n = len(explanations)
    table = pa.table(
        {
            "activation_vector": pa.array([list(map(float, v)) for v in vectors], type=pa.list_(pa.float32())),
            "doc_id": doc_ids or [f"doc{i}" for i in range(n)],
            "position": list(range(n)),
            column: explanations
            if column == "explanation"
            else [f"<explanation>{e}</explanation>" for e in explanations],
        }
    )
    pq.write_table(table, path)
    meta = {
        "kind": "nla_dataset",
        "d_model": d_model or vectors.shape[1],
        "extraction": {"base_model": "tiny", "layer_index": layer},
    }
    (path.parent / (path.name + ".nla_meta.yaml")).write_text(yaml.safe_dump(meta))
    return path


def _two_clusters(n: int, d: int = 64, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2, d))
    labels = np.arange(n) % 2
    vecs = centres[labels] + 0.1 * rng.normal(size=(n, d))
    return (vecs * 3).astype(np.float32), [PASTA if k == 0 else PARIS for k in labels]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_target(tmp_path_factory.mktemp("m") / "tiny", "llama")


def test_load_av_data_skips_bad_rows_and_checks_columns(tmp_path) -> None:
    vecs, expl = _two_clusters(6)
    vecs[1, 3] = np.nan
    vecs[2] = 0.0
    expl[3] = "  "
    data = load_av_data(_write(tmp_path / "a.parquet", vecs, expl))
    assert data.skipped == {
        "wrong_length": 0,
        "non_finite": 1,
        "zero_vector": 1,
        "empty_response": 1,
        "unfinished_response": 0,
    }
    assert data.doc_ids == ["doc0", "doc4", "doc5"]
    assert data.responses[0] == f"<explanation>{PASTA}</explanation>"
    assert data.meta["extraction"]["layer_index"] == 1
    pq.write_table(pa.table({"activation_vector": [[1.0, 2.0]], "doc_id": ["x"]}), tmp_path / "b.parquet")
    with pytest.raises(NLAError, match="response"):
        load_av_data(tmp_path / "b.parquet")
    with pytest.raises(NLAError, match="d_model"):
        load_av_data(_write(tmp_path / "c.parquet", vecs, expl, d_model=32))
    with pytest.raises(NLAError, match="not found"):
        load_av_data(tmp_path / "nope.parquet")


def test_split_is_by_document() -> None:
    vecs, expl = _two_clusters(20)
    from nla.train.av import AVData

    data = AVData(
        torch.from_numpy(vecs),
        [f"<explanation>{e}</explanation>" for e in expl],
        [f"d{i // 4}" for i in range(20)],
        {},
        {},
    )
    train, held = split_by_document(data, 0.2, seed=0)
    assert held is not None and not set(train.doc_ids) & set(held.doc_ids)
    assert len(train.doc_ids) + len(held.doc_ids) == 20 and len(set(held.doc_ids)) == 1


def test_batches_mask_exactly_the_response_tokens(tiny_dir, tmp_path) -> None:
    from nla.models.target import load_target

    av = ActivationVerbalizer.from_target(load_target(str(tiny_dir)), injection_scale=5.0, layer=1)
    vecs, expl = _two_clusters(5)
    data = load_av_data(_write(tmp_path / "a.parquet", vecs, expl, column="response"))
    resp_ids = [av.response_ids(r) for r in data.responses]
    cfg = AVTrainConfig(batch_size=2)
    batches = list(_batches(av, data, resp_ids, cfg)(0))
    assert [b.input_ids.shape[0] for b in batches] == [2, 2, 1]
    p = len(av.prompt_ids())
    seen = []
    for b in batches:
        for i in range(b.input_ids.shape[0]):
            pos = b.response_mask[i].nonzero().squeeze(-1)
            tokens = b.input_ids[i, pos].tolist()
            assert pos.tolist() == list(range(p, p + len(tokens))) and tokens[-1] == av.eot_id
            seen.append(tokens)
    assert sorted(map(tuple, seen)) == sorted(map(tuple, resp_ids))
    again = list(_batches(av, data, resp_ids, cfg)(0))
    assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(batches, again, strict=True))


def test_sft_learns_vector_dependent_responses(tiny_dir, tmp_path) -> None:
    vecs, expl = _two_clusters(64)
    train = _write(tmp_path / "train.parquet", vecs[:48], expl[:48])
    held = _write(tmp_path / "eval.parquet", vecs[48:], expl[48:], doc_ids=[f"e{i}" for i in range(16)])
    cfg = AVTrainConfig(
        out_dir=str(tmp_path / "run"),
        data=str(train),
        eval_data=str(held),
        model=str(tiny_dir),
        max_steps=80,
        batch_size=8,
        lr=1e-2,
        warmup_steps=2,
        eval_every=0,
        save_every=0,
        samples=2,
        sample_tokens=12,
        template="Explain <concept>{injection_char}</concept>",
    )
    av, result = train_av(cfg)
    losses = [
        json.loads(line)["loss"]
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert losses[-1] < 0.5 * losses[0]  # the SFT loss falls
    init, final = result.extra["initial_eval"], result.final_eval
    assert abs(init["nll_gap"]) < 0.1
    assert final["nll_gap"] > 0.05, final  # real vectors now predict the response better than shuffled ones
    assert final["nll_real"] < 0.5 * init["nll_real"]
    assert result.extra["injection_scale"] == default_injection_scale(torch.from_numpy(vecs[:48]))
    loaded = ActivationVerbalizer.from_pretrained(tmp_path / "run" / "final")
    assert loaded.marker == av.marker and loaded.layer == 1
    out = loaded.generate(torch.from_numpy(vecs[48:50]), max_new_tokens=20)
    assert PASTA in out[0][0] and PARIS in out[1][0]


def test_cli_train_av_lora_and_bad_inputs(tiny_dir, tmp_path, capsys) -> None:
    vecs, expl = _two_clusters(12)
    data = _write(tmp_path / "d.parquet", vecs, expl)
    rc = main(
        [
            "train",
            "av",
            "--data",
            str(data),
            "--model",
            str(tiny_dir),
            "--out-dir",
            str(tmp_path / "run"),
            "--max-steps",
            "2",
            "--batch-size",
            "4",
            "--lora",
            "--lora-r",
            "4",
            "--eval-fraction",
            "0.25",
            "--samples",
            "1",
            "--sample-tokens",
            "4",
            "--injection-scale",
            "6",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2 and set(summary["final_eval"]) >= {"nll_real", "nll_shuffled", "nll_gap"}
    final = tmp_path / "run" / "final"
    assert (final / "adapter_config.json").exists()
    assert yaml.safe_load((final / "nla_meta.yaml").read_text())["extraction"]["injection_scale"] == 6.0
    assert ActivationVerbalizer.from_pretrained(final).injection_scale == 6.0

    wide = _write(tmp_path / "w.parquet", np.ones((4, 32), np.float32), ["x"] * 4)
    assert main(["train", "av", "--data", str(wide), "--model", str(tiny_dir), "--out-dir", str(tmp_path / "r2")]) == 2
    assert "d_model 64" in capsys.readouterr().err
    assert main(["train", "av", "--model", str(tiny_dir)]) == 2
    leak = _write(tmp_path / "leak.parquet", vecs[:3], expl[:3])
    assert main(["train", "av", "--data", str(data), "--eval-data", str(leak), "--model", str(tiny_dir)]) == 2
    assert "shares 3 documents" in capsys.readouterr().err


def test_train_from_an_adapter_init_trains_only_that_adapter(tiny_dir, tmp_path) -> None:
    from nla.models.lora import apply_lora, is_lora
    from nla.models.target import load_target

    vecs, expl = _two_clusters(16)
    data = _write(tmp_path / "d.parquet", vecs, expl)
    table = pq.read_table(data)  # verbalize-style flags: two rows the AV did not finish
    table = table.append_column("tag_ok", pa.array([i != 0 for i in range(16)]))
    table = table.append_column("truncated", pa.array([i == 1 for i in range(16)]))
    pq.write_table(table, data)
    assert load_av_data(data).skipped["unfinished_response"] == 2
    av = ActivationVerbalizer.from_target(load_target(str(tiny_dir)), injection_scale=7.0, layer=1)
    av.model = apply_lora(av.model, r=4, alpha=4)
    av.save_pretrained(tmp_path / "init")
    before = {n: p.detach().clone() for n, p in av.model.named_parameters()}
    _, res = train_av(
        AVTrainConfig(
            init=str(tmp_path / "init"),
            data=str(data),
            out_dir=str(tmp_path / "run"),
            max_steps=2,
            batch_size=4,
            lr=1e-2,
            eval_fraction=0.25,
            samples=0,
            eval_every=0,
        )
    )
    assert res.extra["injection_scale"] == 7.0 and res.extra["train_rows"] < 14
    out = ActivationVerbalizer.from_pretrained(tmp_path / "run" / "final")
    assert is_lora(out.model) and out.injection_scale == 7.0 and out.marker == av.marker
    after = dict(out.model.named_parameters())
    changed = {n for n, p in before.items() if not torch.equal(p, after[n])}
    assert changed and all("lora_B" in n or "lora_A" in n for n in changed)
    with pytest.raises(NLAError, match="--lora"):
        train_av(AVTrainConfig(init=str(tmp_path / "init"), data=str(data), out_dir=str(tmp_path / "x"), lora=True))


def test_several_data_files_are_concatenated(tmp_path) -> None:
    vecs = np.random.default_rng(0).normal(size=(3, 8))
    a = _write(tmp_path / "a.parquet", vecs[:2], ["x", "y"], doc_ids=["a0", "a1"])
    b = _write(tmp_path / "b.parquet", vecs[2:], ["z"], doc_ids=["b0"])
    both = load_av_data(f"{a}, {b}")
    assert both.responses == load_av_data(a).responses + load_av_data(b).responses and len(both.responses) == 3
    assert both.doc_ids == ["a0", "a1", "b0"]
    assert torch.equal(both.vectors, torch.cat([load_av_data(a).vectors, load_av_data(b).vectors]))
    other = _write(tmp_path / "o.parquet", vecs[2:], ["w"], layer=2)
    with pytest.raises(NLAError, match="one model and layer"):
        load_av_data(f"{a},{other}")


def test_a_resumed_run_does_not_evaluate_the_untrained_av_again(tiny_dir, tmp_path, monkeypatch) -> None:
    import nla.train.av as av_mod

    vecs, expl = _two_clusters(24)
    train = _write(tmp_path / "train.parquet", vecs[:16], expl[:16])
    held = _write(tmp_path / "eval.parquet", vecs[16:], expl[16:], doc_ids=[f"e{i}" for i in range(8)])
    cfg = AVTrainConfig(out_dir=str(tmp_path / "run"), data=str(train), eval_data=str(held), model=str(tiny_dir),
                        max_steps=2, batch_size=4, save_every=2, eval_every=0, samples=0)  # fmt: skip
    calls = []
    real = av_mod.eval_nll_gap
    monkeypatch.setattr(av_mod, "eval_nll_gap", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    _, first = train_av(cfg)
    assert len(calls) == 2  # before training and at the end
    cfg.max_steps = 4  # the same run, longer: it resumes from its step-2 checkpoint
    _, again = train_av(cfg)
    assert len(calls) == 3 and again.extra["initial_eval"] == first.extra["initial_eval"]
