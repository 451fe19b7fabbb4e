from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from nla.cli import main
from nla.common.errors import NLAError
from nla.evaluate.roundtrip import Baseline, evaluate_ar
from nla.models.ar import ActivationReconstructor
from nla.models.target import load_target
from nla.train.ar import ARTrainConfig, build_ar, load_ar_data, load_ar_parts, train_ar

from helpers import save_tiny_target

WORDS = [
    "fox",
    "dog",
    "Paris",
    "code",
    "pasta",
    "capital",
    "four",
    "lazy",
    "quick",
    "brown",
    "France",
    "Berlin",
]


def write_teacher_parquet(path: Path, explanations: list[str], vectors: torch.Tensor, *, doc_prefix: str = "d",
                          base_model: str = "", layer: int = 1, extra_rows: list[tuple] = ()) -> Path:  # fmt: skip
    """A tiny teacher parquet + sidecar. ``extra_rows`` are (explanation, vector-list) appended raw."""
    rows_e = list(explanations) + [e for e, _ in extra_rows]
    rows_v = [v.tolist() for v in vectors] + [v for _, v in extra_rows]
    n = len(rows_e)
    table = pa.table({
        "activation_vector": pa.array(rows_v, type=pa.list_(pa.float32())),
        "doc_id": [f"{doc_prefix}{i // 2}" for i in range(n)],
        "position": list(range(n)),
        "detokenized_text_truncated": ["ctx"] * n,
        "explanation": rows_e,
    })  # fmt: skip
    pq.write_table(table, path)
    meta = {"kind": "nla_dataset", "d_model": int(vectors.shape[1]),
            "extraction": {"base_model": base_model, "layer_index": layer}}  # fmt: skip
    Path(str(path) + ".nla_meta.yaml").write_text(yaml.safe_dump(meta))
    return path


def _dataset(tmp_path: Path, base: str, n: int, name: str, seed: int) -> Path:
    """Explanations of random words; targets = a fixed random linear map of the base AR's own output."""
    g = torch.Generator().manual_seed(seed)
    texts = [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (4,), generator=g).tolist()) for _ in range(n)]
    ar = ActivationReconstructor.from_target(load_target(base), 1)
    mix = torch.eye(64) + 0.5 * torch.randn(64, 64, generator=torch.Generator().manual_seed(0)) / 8
    vectors = ar.predict(texts) @ mix.T
    return write_teacher_parquet(tmp_path / f"{name}.parquet", texts, vectors, doc_prefix=name, base_model=base)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp_path = tmp_path_factory.mktemp("tiny_run")
    base = str(save_tiny_target(tmp_path / "base", "llama"))
    return {
        "base": base,
        "train": _dataset(tmp_path, base, 48, "train", 1),
        "eval": _dataset(tmp_path, base, 16, "eval", 2),
    }


def test_load_ar_data_skips_and_counts_bad_rows(tmp_path: Path) -> None:
    v = torch.randn(3, 8)
    bad = [
        ("nan vector", [float("nan")] * 8),
        ("zero vector", [0.0] * 8),
        ("  ", [1.0] * 8),
        ("inf", [float("inf")] + [0.0] * 7),
    ]
    p = write_teacher_parquet(tmp_path / "x.parquet", ["a", "b", "c"], v, extra_rows=bad)
    data = load_ar_data(p)
    assert data.explanations == ["a", "b", "c"] and torch.equal(data.vectors, v)
    assert data.skipped == {"nonfinite_vector": 2, "zero_vector": 1, "empty_explanation": 1}
    with pytest.raises(NLAError, match="d_model=16"):
        load_ar_data(p, d_model=16)


def test_load_ar_data_rejects_bad_files(tmp_path: Path) -> None:
    pq.write_table(pa.table({"explanation": ["a"]}), tmp_path / "nocol.parquet")
    with pytest.raises(NLAError, match="activation_vector"):
        load_ar_data(tmp_path / "nocol.parquet")
    with pytest.raises(NLAError, match="not found"):
        load_ar_data(tmp_path / "missing.parquet")
    p = write_teacher_parquet(tmp_path / "ragged.parquet", ["a"], torch.randn(1, 8), extra_rows=[("b", [1.0] * 9)])
    with pytest.raises(NLAError, match="different lengths"):
        load_ar_data(p)


def test_several_data_files_train_together(tmp_path: Path) -> None:
    a = write_teacher_parquet(tmp_path / "a.parquet", ["a", "b"], torch.randn(2, 8), doc_prefix="a", base_model="m")
    b = write_teacher_parquet(
        tmp_path / "b.parquet", ["c"], torch.randn(1, 8), doc_prefix="b", base_model="m", extra_rows=[(" ", [1.0] * 8)]
    )
    both = load_ar_parts(f"{a}, {b}")
    assert both.explanations == ["a", "b", "c"] and both.doc_ids == ["a0", "a0", "b0"]
    assert torch.equal(both.vectors, torch.cat([load_ar_data(a).vectors, load_ar_data(b).vectors]))
    assert both.skipped["empty_explanation"] == 1 and both.sidecar["extraction"]["base_model"] == "m"
    other = write_teacher_parquet(tmp_path / "o.parquet", ["x"], torch.randn(1, 8), base_model="m", layer=2)
    with pytest.raises(NLAError, match="one model and layer"):
        load_ar_parts(f"{a},{other}")
    wide = write_teacher_parquet(tmp_path / "w.parquet", ["x"], torch.randn(1, 9), base_model="m")
    with pytest.raises(NLAError, match="d=9"):
        load_ar_parts(f"{a},{wide}")
    with pytest.raises(NLAError, match="no data file"):
        load_ar_parts(" , ")


def test_evaluate_ar_controls_with_an_oracle() -> None:
    gold = torch.randn(32, 16) + 2.0

    class Oracle:  # returns the true vector for "row i"
        def predict(self, explanations: list[str], *, batch_size: int = 32) -> torch.Tensor:
            return torch.stack([gold[int(e)] if e else torch.ones(16) for e in explanations])

    base = Baseline.from_train(gold)
    m = evaluate_ar(Oracle(), [str(i) for i in range(32)], gold, base)
    assert m["fve_nrm"] == pytest.approx(1.0, abs=1e-5) and m["retrieval_top1_at_8"] == 1.0
    assert m["fve_mean_predictor"] == pytest.approx(0.0, abs=1e-5)  # eval == train here
    assert m["fve_shuffled"] < 0 and m["fve_random"] < 0 and m["fve_empty"] < 0.5
    assert m["baseline"] == pytest.approx(base.value)
    assert "fve_mean_predictor" not in evaluate_ar(Oracle(), ["0", "1"], gold[:2], 0.5)


def test_train_ar_loss_falls_and_saves_a_loadable_ar(tiny_run: dict, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = ARTrainConfig(data=str(tiny_run["train"]), eval_data=str(tiny_run["eval"]), out_dir=str(out), max_steps=12,
                        batch_size=8, lr=1e-3, warmup_steps=1, eval_every=6, save_every=6)  # fmt: skip
    train, held = load_ar_data(tiny_run["train"]), load_ar_data(tiny_run["eval"])
    baseline = Baseline.from_train(train.vectors)
    untrained = evaluate_ar(build_ar(cfg, tiny_run["base"], 1), held.explanations, held.vectors, baseline)
    res = train_ar(cfg)
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 12 and sum(losses[-3:]) < 0.5 * sum(losses[:3])
    fve = res.final_eval["fve_nrm"]
    assert fve > untrained["fve_nrm"] + 0.1 and fve > res.final_eval["fve_shuffled"] + 0.1
    assert res.extra["model"] == tiny_run["base"] and res.extra["layer"] == 1
    ar = ActivationReconstructor.from_pretrained(out / "final")
    again = evaluate_ar(ar, held.explanations, held.vectors, baseline)
    assert again["fve_nrm"] == pytest.approx(res.final_eval["fve_nrm"], abs=1e-4)


def test_train_modes_freeze_the_right_parameters(tiny_run: dict) -> None:
    cfg = ARTrainConfig(data="x", eval_data="y", train_last_n_layers=1)
    ar = build_ar(cfg, tiny_run["base"], 1)
    names = {n for n, p in ar.named_parameters() if p.requires_grad}
    assert (
        "head.weight" in names
        and names
        and all(n == "head.weight" or n.startswith("backbone.layers.1.") for n in names)
    )
    ar = build_ar(ARTrainConfig(lora=True, lora_r=2), tiny_run["base"], 1)
    assert all(n == "head.weight" or "lora_" in n for n, p in ar.named_parameters() if p.requires_grad)
    with pytest.raises(NLAError, match="choose one"):
        build_ar(ARTrainConfig(lora=True, train_last_n_layers=1), tiny_run["base"], 1)


def test_train_ar_input_errors(tiny_run: dict, tmp_path: Path) -> None:
    with pytest.raises(NLAError, match="--eval-data"):
        train_ar(ARTrainConfig(data=str(tiny_run["train"]), out_dir=str(tmp_path / "a")))
    with pytest.raises(NLAError, match="share"):
        train_ar(
            ARTrainConfig(data=str(tiny_run["train"]), eval_data=str(tiny_run["train"]), out_dir=str(tmp_path / "b"))
        )
    wrong = write_teacher_parquet(tmp_path / "w.parquet", ["a", "b"], torch.randn(2, 32), base_model=tiny_run["base"])
    with pytest.raises(NLAError, match="d_model"):
        train_ar(ARTrainConfig(data=str(wrong), eval_data=str(tiny_run["eval"]), out_dir=str(tmp_path / "c")))
    nometa = tmp_path / "nometa.parquet"
    pq.write_table(pq.read_table(tiny_run["train"]), nometa)
    with pytest.raises(NLAError, match="--model"):
        train_ar(ARTrainConfig(data=str(nometa), eval_data=str(tiny_run["eval"]), out_dir=str(tmp_path / "d")))


def test_cli_train_ar_resumes_and_prints_controls(tiny_run: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    args = ["train", "ar", "--data", str(tiny_run["train"]), "--eval-data", str(tiny_run["eval"]),
            "--out-dir", str(out), "--batch-size", "8", "--lr", "1e-3", "--lora", "--lora-r", "4",
            "--save-adapter-only", "--eval-every", "0"]  # fmt: skip
    assert main([*args, "--max-steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert "held-out: fve_nrm=" in printed and "shuffled=" in printed and "empty=" in printed
    assert json.loads(printed[printed.index("{") :])["steps"] == 2
    assert (out / "final" / "adapter_model.safetensors").exists()
    assert main([*args, "--max-steps", "3"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["steps"] == 3
    assert main(["train", "ar", "--out-dir", str(tmp_path / "e")]) == 2
    assert capsys.readouterr().err.strip().startswith("nla: error: --data")


def test_train_ar_from_init_checkpoint(tiny_run: dict, tmp_path: Path) -> None:
    ar = ActivationReconstructor.from_target(load_target(tiny_run["base"]), 1)
    ar.save_pretrained(tmp_path / "full")
    ar.enable_lora(r=4, alpha=8)
    ar.save_pretrained(tmp_path / "adapter", adapter_only=True)
    common = dict(
        data=str(tiny_run["train"]), eval_data=str(tiny_run["eval"]), max_steps=2, batch_size=8, lr=1e-2, eval_every=0
    )
    train_ar(
        ARTrainConfig(init=str(tmp_path / "adapter"), save_adapter_only=True, out_dir=str(tmp_path / "a"), **common)
    )
    tuned = ActivationReconstructor.from_pretrained(tmp_path / "a" / "final")
    assert tuned.has_lora and (tmp_path / "a" / "final" / "adapter_model.safetensors").exists()
    assert not torch.equal(tuned.head.weight, ar.head.weight)
    train_ar(ARTrainConfig(init=str(tmp_path / "full"), out_dir=str(tmp_path / "f"), **common))
    full = ActivationReconstructor.from_pretrained(tmp_path / "f" / "final")
    assert not full.has_lora and not torch.equal(full.predict(["fox dog"]), ar.predict(["fox dog"]))
    with pytest.raises(NLAError, match="LoRA"):
        train_ar(
            ARTrainConfig(init=str(tmp_path / "full"), save_adapter_only=True, out_dir=str(tmp_path / "x"), **common)
        )
    with pytest.raises(NLAError, match="layer"):
        train_ar(ARTrainConfig(init=str(tmp_path / "full"), layer=2, out_dir=str(tmp_path / "y"), **common))


def test_train_ar_baseline_from_other_data(tiny_run: dict, tmp_path: Path) -> None:
    common = dict(data=str(tiny_run["train"]), eval_data=str(tiny_run["eval"]), max_steps=1, batch_size=8, eval_every=0)
    res = train_ar(ARTrainConfig(baseline_data=str(tiny_run["eval"]), out_dir=str(tmp_path / "b"), **common))
    want = Baseline.from_train(load_ar_data(tiny_run["eval"]).vectors).value
    assert want != pytest.approx(Baseline.from_train(load_ar_data(tiny_run["train"]).vectors).value)
    assert res.final_eval["baseline"] == pytest.approx(want)
    saved = ActivationReconstructor.from_pretrained(tmp_path / "b" / "final").eval_meta
    assert saved["baseline_mse"] == pytest.approx(want) and str(tiny_run["eval"]) in saved["baseline"]
    with pytest.raises(NLAError, match="not found"):
        train_ar(ARTrainConfig(baseline_data=str(tmp_path / "missing.parquet"), out_dir=str(tmp_path / "m"), **common))
