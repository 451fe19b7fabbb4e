"""``nla faithfulness`` end to end on tiny random checkpoints: files, summary, resume, errors; and --quick
on the shipped NLA (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from nla.cli import main
from nla.faithfulness.suite import QUICK_CONCEPTS, FaithfulnessConfig, command_line

LAYER = 1
WORDS = {"cooking": ["pasta", "boil", "cook"], "code": ["def", "return", "add"]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from nla.models.ar import ActivationReconstructor
    from nla.models.av import ActivationVerbalizer
    from nla.models.target import load_target

    from helpers import save_tiny_target

    root = tmp_path_factory.mktemp("faith")
    save_tiny_target(root / "target")
    target = load_target(str(root / "target"))
    ActivationVerbalizer.from_target(target, injection_scale=8.0, layer=LAYER).save_pretrained(root / "av")
    ActivationReconstructor.from_target(target, LAYER).save_pretrained(root / "ar")
    concepts = {
        "concepts": [
            {
                "name": name,
                "keywords": words,
                "prompts": [f"The {w} and the {words[(i + 1) % 3]} again" for i, w in enumerate(words * 2)],
                "heldout": [f"We {w} it" for w in words],
            }
            for name, words in WORDS.items()
        ],
        "neutral": {
            "prompts": ["The quick brown fox", "The lazy dog sat", "Paris is a city", "The fox jumps over"],
            "heldout": ["A brown dog", "The city of Berlin", "Over the lazy fox"],
        },
    }
    (root / "concepts.yaml").write_text(yaml.safe_dump(concepts))
    ctxs = ["The quick brown fox", "Paris is the capital of", "def add(a, b):", "The lazy dog"]
    vecs = torch.randn(4, target.d_model, generator=torch.Generator().manual_seed(0)) * 3
    for name in ("eval", "train"):
        table = pa.table(
            {
                "activation_vector": pa.array(vecs.tolist(), pa.list_(pa.float32())),
                "doc_id": [f"{name}{i}" for i in range(4)],
                "detokenized_text_truncated": ctxs,
                "explanation": ['Final token: a word.\nBefore it: "' + c[:8] + '"' for c in ctxs],
            }
        )
        pq.write_table(table, root / f"{name}.parquet")
    return {k: str(root / k) for k in ("av", "ar", "concepts.yaml", "eval.parquet", "train.parquet")} | {"root": root}


def args(tiny: dict, out: Path, *extra: str) -> list[str]:
    return [
        "faithfulness",
        *("--av", tiny["av"], "--ar", tiny["ar"], "--concepts", tiny["concepts.yaml"]),
        *("--data", tiny["eval.parquet"], "--train-data", tiny["train.parquet"], "--rows", "3"),
        *("--alphas", "0", "1", "2", "--bases", "2", "--planted-bases", "1", "--topic-texts", "1"),
        *("--min-auc", "0", "--max-new-tokens", "3", "--batch-size", "8", "--out", str(out), *extra),
    ]


def test_report_files_summary_and_resume(tiny: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "rep"
    assert main(args(tiny, out)) == 0
    printed = capsys.readouterr().out
    assert "NLA faithfulness report (greedy decoding" in printed and "checks:" in printed
    report = json.loads((out / "report.json").read_text())
    assert set(report) >= {"directions", "planting", "topic_recall", "heldout", "headline", "checks", "meta"}
    meta = report["meta"]
    assert meta["decoding"] == "greedy" and meta["command"].startswith("nla faithfulness --av ")
    # 2 bases + 2 concepts x 2 alphas x 1 base + 2 raw directions + 2 topic texts + 3 rows
    assert meta["explanations_generated"] + meta["explanations_from_cache"] <= 2 + 4 + 2 + 2 + 3
    assert meta["explanations_generated"] >= 5
    assert report["heldout"]["token_lookup"]["train_rows"] == 4
    assert set(report["heldout"]["perturbations"]) == {"nla", "teacher"}
    assert [c["passed"] for c in report["checks"]].count(None) <= len(report["checks"])
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "Planted directions" in html and "<script" not in html
    cache = (out / "work" / "explanations.jsonl").read_text().splitlines()
    assert len(cache) == meta["explanations_generated"]
    # a second run (e.g. after a kill) writes no explanation again; --json prints the whole report
    assert main(args(tiny, out, "--json")) == 0
    assert json.loads(capsys.readouterr().out)["headline"]["decoding"] == "greedy"
    again = json.loads((out / "report.json").read_text())["meta"]
    assert again["explanations_generated"] == 0 and again["explanations_from_cache"] >= 5
    assert len((out / "work" / "explanations.jsonl").read_text().splitlines()) == len(cache)


def test_best_of_and_no_plots(tiny: dict, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    assert main(args(tiny, out, "--best-of", "2", "--plots", "false", "--rows", "0")) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["meta"]["decoding"].startswith("best-of-2")
    assert "skipped" in report["heldout"]
    assert "Plots are off" in (out / "report.html").read_text()


def test_distinct_items_is_its_own_decoding(tiny: dict, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    assert main(args(tiny, out, "--plots", "false", "--rows", "0")) == 0
    assert main(args(tiny, out, "--plots", "false", "--rows", "0", "--distinct-items")) == 0
    meta = json.loads((out / "report.json").read_text())["meta"]
    assert meta["decoding"] == "greedy; distinct list items"
    assert meta["explanations_from_cache"] == 0  # the greedy run's answers are not reused


def test_bad_input_is_one_clear_error(tiny: dict, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("concepts: [{name: x, keywords: [x], prompts: [one]}]\n")
    assert main(["faithfulness", "--concepts", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "nla: error:" in capsys.readouterr().err and not (tmp_path / "o" / "report.json").exists()
    assert main(args(tiny, tmp_path / "o2", "--only", "nope")) == 2
    assert "unknown concept" in capsys.readouterr().err


def test_model_picks_the_nla_shipped_for_it(tiny: dict, tmp_path: Path, monkeypatch, capsys) -> None:
    import shutil

    import nla.models.target

    assert main([*args(tiny, tmp_path / "o"), "--model", "gemma3-270m"]) == 2  # --av given too
    assert "not both" in capsys.readouterr().err
    without_av = [a for a in args(tiny, tmp_path / "o") if a not in (tiny["av"], tiny["ar"], "--av", "--ar")]
    assert main([*without_av, "--model", "Qwen/Qwen2.5-0.5B"]) == 2
    assert "NLAs ship only for the embedded models" in capsys.readouterr().err
    monkeypatch.setattr(nla.models.target, "shipped_nla_dir", lambda name: tmp_path / "nla" / name)
    assert main([*without_av, "--model", "gemma3"]) == 2
    assert "no NLA is shipped for gemma3-270m" in capsys.readouterr().err
    for role in ("av", "ar"):
        shutil.copytree(tiny[role], tmp_path / "nla" / "gemma3-270m" / role)
    out = tmp_path / "g"
    assert main([*without_av, "--model", "gemma3-270m", "--rows", "0", "--plots", "false", "--out", str(out)]) == 0
    meta = json.loads((out / "report.json").read_text())["meta"]
    assert meta["av"] == f"shipped ({(tmp_path / 'nla' / 'gemma3-270m').resolve()}/av)" and meta["ar"].endswith("/ar)")


def test_command_line_lists_the_options_that_differ() -> None:
    cfg = FaithfulnessConfig(quick=True, alphas=[0.0, 1.0], data="a b.parquet")
    assert command_line(cfg) == "nla faithfulness --data 'a b.parquet' --alphas 0 1 --quick"
    assert command_line(FaithfulnessConfig()) == "nla faithfulness"


@pytest.mark.slow
def test_quick_run_on_the_shipped_nla(tmp_path: Path) -> None:
    assert main(["faithfulness", "--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["meta"]["quick"] and [d["concept"] for d in report["directions"]] == QUICK_CONCEPTS
    assert all(d["auc"] >= 0.9 for d in report["directions"])  # the shipped prompts give clean directions
    assert set(report["by_split"]) == {"covered", "novel"}
    split_rows = [c for c in report["checks"] if c["check"].startswith(("covered:", "novel:"))]
    assert split_rows and all(c["too_few"] and c["passed"] is None for c in split_rows)  # 2 bases judge nothing
    assert report["headline"]["false_positive_any"] is not None and report["headline"]["hit_rate@2"] is not None
    assert (tmp_path / "report.html").exists()
