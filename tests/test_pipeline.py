from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from nla.cli import main
from nla.common.errors import NLAError
from nla.data.documents import Document, write_jsonl
from nla.pipeline import STAGES, PipelineConfig, load_pipeline_config, preset_names, run_pipeline

from helpers import save_tiny_target

WORDS = "the quick brown fox jumps over lazy dog Paris capital France language model add return pasta".split()


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_pipeline(tmp_path) -> PipelineConfig:
    rng = random.Random(0)
    docs = [Document(f"d{i:02d}", text=" ".join(rng.choice(WORDS) for _ in range(30))) for i in range(24)]
    corpus = write_jsonl(docs, tmp_path / "corpus.jsonl")
    model = save_tiny_target(tmp_path / "tiny", "llama")
    return load_pipeline_config(
        None, run_dir=str(tmp_path / "run"), model=str(model), layer=1, held_out_rows=4, save_every=0,
        extract={"corpus": str(corpus), "positions_per_doc": 2, "skip": 2, "max_tokens": 48,
                 "split_fractions": [0.25, 0.25, 0.25, 0.25]},
        teach={"tail_tokens": 4, "top_k": 2},
        ar_sft={"max_steps": 2, "batch_size": 4},
        av_sft={"max_steps": 2, "batch_size": 4, "samples": 1, "sample_tokens": 8},
        rl={"steps": 1, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 8, "eval_every": 0, "eval_rows": 4},
        export={"rank": 2},
        refit={"rows": 4, "verbalize": {"max_new_tokens": 8}, "distill": {"max_steps": 1, "batch_size": 4,
               "max_response_tokens": 8}, "ar": {"max_steps": 1, "batch_size": 4}},
        eval={"rows": 4, "max_new_tokens": 8},
    )  # fmt: skip


def test_pipeline_runs_end_to_end_then_skips_everything(tmp_path, capsys) -> None:
    cfg = tiny_pipeline(tmp_path)
    first = run_pipeline(cfg, stop_after="teach")
    assert first.stages == {"extract": "ran", "teach": "ran", **{s: "not run" for s in STAGES[2:]}}
    ran: list[str] = []
    second = run_pipeline(cfg, on_stage=ran.append)
    assert ran == ["ar_sft", "av_sft", "rl", "export", "refit", "eval", "ship"]
    assert second.stages["extract"] == "skipped" and second.stages["eval"] == "ran"
    run = tmp_path / "run"
    assert all((run / s / "DONE").exists() for s in STAGES)
    card = json.loads((run / "eval" / "card.json").read_text())
    assert card == second.card
    for part in ("ar_sft_teacher", "av_sft_round_trip", "rl_current_ar", "rl_frozen_sft_ar", "shipped"):
        assert "fve_nrm" in card[part] and "fve_shuffled" in card[part], part
    assert {"fve_shuffled", "fve_empty", "fve_random"} <= set(card["controls"])
    assert "retrieval_top1_at_4" in card["rl_current_ar"] and "tag_failure_rate" in card["rl_current_ar"]
    assert len(card["examples"]) == 4 and {"teacher", "av_sft", "rl", "shipped"} <= set(card["examples"][0])
    assert card["compute"]["rl_seconds"] > 0 and "ship_seconds" not in card["compute"]
    assert list(card["ladder"])[:-1] == ["ar_sft_teacher", "av_sft_round_trip", "rl_current_ar", "shipped"]
    ship = run / "ship" / "nla"  # the compact NLA: adapters + head + card, no tokenizer, no training state
    assert sorted(p.name for p in ship.iterdir()) == ["ar", "av", "card.json"]
    assert (ship / "ar" / "adapter_model.safetensors").exists() and (ship / "ar" / "value_head.safetensors").exists()
    assert not (ship / "ar" / "tokenizer.json").exists() and not (ship / "av" / "model.safetensors").exists()
    assert (
        main(["explain", "fox dog", "--av", str(ship / "av"), "--ar", str(ship / "ar"), "--max-new-tokens", "4"]) == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--av",
                str(run / "rl/final/av"),
                "--ar",
                str(run / "rl/final/ar"),
                "--sft-ar",
                str(run / "ar_sft/final"),
                "--data",
                str(run / "teach/eval.parquet"),
                "--rows",
                "3",
                "--max-new-tokens",
                "6",
                "--best-of",
                "2",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "after RL (co-trained AR)" in printed and "AR-SFT reading teacher text" in printed
    assert "rl_current_ar best-of-2" in printed and "best-of read by a second AR" in printed
    third = run_pipeline(cfg, on_stage=ran.append)
    assert set(third.stages.values()) == {"skipped"} and len(ran) == 7  # nothing ran again
    # --from redoes the chosen stage and the later ones only
    assert main(["train", "pipeline", "--config", str(_dump(cfg, tmp_path)), "--from", "eval"]) == 0
    assert json.loads((run / "eval" / "DONE").read_text())["stage"] == "eval"
    assert (run / "rl" / "DONE").stat().st_mtime < (run / "eval" / "DONE").stat().st_mtime


def _dump(cfg: PipelineConfig, tmp_path):
    import yaml

    from nla.common.config import config_to_dict

    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    return path


def test_presets_and_errors(tmp_path, capsys) -> None:
    assert {"cpu-smollm2", "gpu"} <= set(preset_names())
    cpu = load_pipeline_config("cpu-smollm2", run_dir=str(tmp_path / "x"))
    assert cpu.model == "smollm2-135m" and cpu.layer == 20 and cpu.teach.teacher == "offline" and cpu.bf16 == "false"
    gpu = load_pipeline_config("gpu")
    assert gpu.bf16 == "true" and gpu.teach.teacher in ("anthropic", "hf") and gpu.rl.steps > cpu.rl.steps
    with pytest.raises(NLAError, match="unknown preset"):
        load_pipeline_config("tpu")
    with pytest.raises(NLAError, match="unknown"):
        load_pipeline_config("cpu-smollm2", rl_stepz=3)
    with pytest.raises(NLAError, match="unknown"):
        load_pipeline_config("cpu-smollm2", rl={"stepz": 3})
    with pytest.raises(NLAError, match="needs the earlier stage"):
        run_pipeline(cpu, start="rl")
    with pytest.raises(SystemExit) as e:
        main(["train", "pipeline", "--help"])
    assert e.value.code == 0 and "--stop-after" in capsys.readouterr().out
    assert main(["train", "pipeline", "--preset", "nope"]) == 2


# ------------------------------------------------------------ the config each stage receives (stages faked)


class _Result:
    def __init__(self, **kw) -> None:
        self.__dict__.update(kw)


@pytest.fixture
def fake_stages(monkeypatch):
    """Replace every stage function of nla.pipeline by one that records its config; returns the records."""
    import dataclasses

    import pyarrow as pa
    import pyarrow.parquet as pq

    import nla.pipeline as pipeline

    seen: dict[str, list] = {}

    def record(name, cfg, result):
        seen.setdefault(name, []).append(dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg)
        return result

    def fake_verbalize(cfg):
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"explanation": ["a", "b"], "tag_ok": [True] * 2, "truncated": [False] * 2}), cfg.out)
        return record("verbalize", cfg, cfg.out)

    trained = _Result(steps=1, final_loss=0.0, final_eval={}, extra={}, last=None)
    fakes = {
        "extract": lambda c: record("extract", c, _Result(n_rows=8, rows_per_split=dict.fromkeys(
            ("av_sft", "ar_sft", "rl", "eval"), 2), n_used_docs=4, seconds=0)),
        "teach": lambda c: record("teach", c, _Result(n_rows=2, n_kept=2, drops={})),
        "train_ar": lambda c: record("train_ar", c, trained),
        "train_av": lambda c: record("train_av", c, (None, trained)),
        "train_rl": lambda c: record("train_rl", c, trained),
        "export_nla": lambda av, ar, out, **kw: record("export", {"av": av, "ar": ar, "out": out, **kw}, _Result(
            rank=kw["rank"], size_mib=0.0, kept_energy={}, dropped={})),
        "verbalize": fake_verbalize,
        "evaluation_card": lambda c: record("evaluation_card", c, {"ladder": {}}),
        "format_card": lambda card: "",
    }  # fmt: skip
    for name, fn in fakes.items():
        monkeypatch.setattr(pipeline, name, fn)
    return seen


def _subset(got: dict, expected: dict) -> dict:
    return {k: got.get(k, "<absent>") for k in expected}


def test_cpu_preset_gives_every_stage_the_same_config_as_the_flat_form(tmp_path, fake_stages) -> None:
    """Pinned from the stage configs the flat PipelineConfig (before the nested sections) gave cpu-smollm2."""
    run = tmp_path / "run"
    run_pipeline(load_pipeline_config("cpu-smollm2", run_dir=str(run)), stop_after="eval")
    r = str(run)
    train = {"model": "smollm2-135m", "layer": None, "seed": 0, "bf16": "false", "save_every": 25, "eval_every": 0}
    expected = {
        "extract": [{"model": "smollm2-135m", "corpus": "default", "out": f"{r}/extract/acts", "layer": 20,
                     "positions_per_doc": 10, "skip": 50, "max_tokens": 512, "limit_docs": None, "seed": 0,
                     "split_fractions": [0.25, 0.25, 0.4, 0.1], "batch_tokens": 1024}],
        "teach": [{"data": f"{r}/extract/acts", "split": s, "out": f"{r}/teach/{s}.parquet", "teacher": "offline",
                   "model": "", "limit": n, "seed": 0, "concurrency": 8, "style": "full"}
                  for s, n in (("ar_sft", 0), ("av_sft", 0), ("eval", 512))],
        "train_ar": [
            {**train, "out_dir": f"{r}/ar_sft", "data": f"{r}/teach/ar_sft.parquet", "init": "",
             "eval_data": f"{r}/teach/eval.parquet", "max_steps": 600, "batch_size": 16, "lr": 2e-4,
             "lora": False, "train_last_n_layers": 6, "warmup_steps": 30, "eval_max_rows": 512,
             "save_adapter_only": False},
            {**train, "out_dir": f"{r}/refit/ar", "data": f"{r}/refit/rl_av_text.parquet",
             "init": f"{r}/export/nla/ar", "eval_data": f"{r}/teach/eval.parquet", "max_steps": 150,
             "batch_size": 16, "lr": 1e-4, "save_adapter_only": True, "train_last_n_layers": None,
             "warmup_steps": 10, "eval_max_rows": 0},
        ],
        "train_av": [
            {**train, "out_dir": f"{r}/av_sft", "data": f"{r}/teach/av_sft.parquet", "init": "",
             "eval_data": f"{r}/teach/eval.parquet", "max_steps": 150, "batch_size": 8, "lr": 5e-5,
             "warmup_steps": 10, "max_response_tokens": 160, "eval_rows": 96, "samples": 3},
            {**train, "out_dir": f"{r}/refit/av", "data": f"{r}/refit/rl_av_text.parquet",
             "init": f"{r}/export/nla/av", "eval_data": "", "max_steps": 100, "batch_size": 8, "lr": 1e-4,
             "warmup_steps": 10, "max_response_tokens": 176, "eval_rows": 128, "samples": 0},
        ],
        "train_rl": [{"av": f"{r}/av_sft/final", "ar": f"{r}/ar_sft/final", "data": f"{r}/extract/acts",
                      "split": "rl", "eval_data": f"{r}/teach/eval.parquet", "out_dir": f"{r}/rl", "steps": 45,
                      "prompts_per_step": 4, "group_size": 4, "max_new_tokens": 176, "av_lr": 2e-5, "ar_lr": 1e-4,
                      "kl_coef": 0.01, "lora": False, "eval_every": 0, "eval_rows": 32, "train_batch_size": 8,
                      "gen_batch_size": 16, "length_target": 120, "length_coef": 0.004, "save_every": 25,
                      "seed": 0, "bf16": "false"}],
        "export": [{"av": f"{r}/rl/final/av", "ar": f"{r}/rl/final/ar", "out": f"{r}/export/nla", "rank": 16,
                    "dtype": "float16"}],
        "verbalize": [{"av": f"{r}/rl/final/av", "data": f"{r}/extract/acts", "split": "ar_sft",
                       "out": f"{r}/refit/rl_av_text.parquet", "limit": 1024, "max_new_tokens": 176,
                       "do_sample": False, "seed": 0, "device": "cuda" if torch.cuda.is_available() else "cpu"}],
        "evaluation_card": [{"av": f"{r}/rl/final/av", "ar": f"{r}/rl/final/ar", "sft_av": f"{r}/av_sft/final",
                             "sft_ar": f"{r}/ar_sft/final", "data": f"{r}/teach/eval.parquet",
                             "train_data": f"{r}/teach/ar_sft.parquet", "rows": 128, "max_new_tokens": 176,
                             "stage": [f"shipped={r}/export/nla/av,{r}/export/nla/ar"], "seed": 0,
                             "out": f"{r}/eval/card.json", "compute": f"{r}/eval/compute.yaml", "best_of": 1}],
    }  # fmt: skip
    assert sorted(fake_stages) == sorted(expected)
    for stage, calls in expected.items():
        assert len(fake_stages[stage]) == len(calls), stage
        for got, want in zip(fake_stages[stage], calls, strict=True):
            assert _subset({k: str(v) if hasattr(v, "__fspath__") else v for k, v in got.items()}, want) == want


def test_dotted_flags_nested_yaml_and_precedence(tmp_path, fake_stages) -> None:
    """defaults < --preset < --config < flags, merged key by key inside the sections."""
    config = tmp_path / "mine.yaml"
    config.write_text("seed: 3\nrl:\n  steps: 7\n  kl_coef: 0.5\nrefit:\n  distill:\n    lr: 0.002\n")
    argv = ["train", "pipeline", "--preset", "cpu-smollm2", "--config", str(config), "--run-dir", str(tmp_path / "r"),
            "--rl.kl-coef", "0.02", "--ar-sft.max-steps", "300", "--ar-sft.lora", "--refit.distill.max-steps", "9",
            "--extract.split-fractions", "0.5", "0.2", "0.2", "0.1", "--stop-after", "eval"]  # fmt: skip
    assert main(argv) == 0
    (rl,) = fake_stages["train_rl"]
    assert (rl["kl_coef"], rl["steps"], rl["seed"]) == (0.02, 7, 3)  # flag > config > preset; shared seed
    assert (rl["length_target"], rl["gen_batch_size"], rl["ar_max_length"]) == (120, 16, 256)  # preset, default
    ar_sft, refit_ar = fake_stages["train_ar"]
    assert (ar_sft["max_steps"], ar_sft["lora"], ar_sft["train_last_n_layers"]) == (300, True, 6)
    assert (refit_ar["max_steps"], refit_ar["lora"], refit_ar["seed"]) == (150, False, 3)  # another section
    distill = fake_stages["train_av"][1]
    assert (distill["max_steps"], distill["lr"], distill["max_response_tokens"]) == (9, 0.002, 176)
    assert fake_stages["extract"][0]["split_fractions"] == [0.5, 0.2, 0.2, 0.1]
    assert all(t["seed"] == 3 for t in fake_stages["teach"]) and fake_stages["evaluation_card"][0]["seed"] == 3
    # the run's pipeline.yaml is the resolved nested config, without the paths the pipeline fills in
    import yaml

    saved = yaml.safe_load((tmp_path / "r" / "pipeline.yaml").read_text())
    assert saved["rl"]["kl_coef"] == 0.02 and saved["refit"]["distill"]["max_steps"] == 9
    assert "out_dir" not in saved["rl"] and "seed" not in saved["rl"] and "init" not in saved["refit"]["ar"]
    assert load_pipeline_config(None, tmp_path / "r" / "pipeline.yaml") == load_pipeline_config(
        "cpu-smollm2", config, run_dir=str(tmp_path / "r"), **{"rl.kl_coef": 0.02, "ar_sft.max_steps": 300},
        ar_sft={"lora": True}, refit={"distill": {"max_steps": 9}}, extract={"split_fractions": [0.5, 0.2, 0.2, 0.1]},
    )  # fmt: skip


def test_unknown_and_pipeline_owned_keys_are_one_clear_error(tmp_path, capsys) -> None:
    def error(text: str) -> str:
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        assert main(["train", "pipeline", "--config", str(path), "--run-dir", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("nla: error: ") and err.count("\n") == 1, err
        return err

    top = error("rl_steps: 3\n")  # a flat option of the old form
    assert "rl_steps" in top and "PipelineConfig" in top and "known:" in top and " rl," in top
    inner = error("rl:\n  kl_coeff: 0.1\n")
    assert "in section rl" in inner and "kl_coeff" in inner and "kl_coef" in inner and "out_dir" not in inner
    deep = error("refit:\n  distill:\n    stepz: 1\n")
    assert "in section refit.distill" in deep and "max_steps" in deep
    assert "rl.out_dir cannot be set" in error("rl:\n  out_dir: elsewhere\n")
    assert "refit.ar.data cannot be set" in error("refit:\n  ar:\n    data: x.parquet\n")
    assert "top-level option seed" in error("ar_sft:\n  seed: 1\n")
    assert "section rl must be a mapping" in error("rl: 3\n")
    assert not (tmp_path / "r").exists()  # nothing was started
    with pytest.raises(SystemExit):  # no flag for what the pipeline fills in, nor for unknown options
        main(["train", "pipeline", "--rl.out-dir", "x"])
    with pytest.raises(SystemExit):
        main(["train", "pipeline", "--rl.kl-coeff", "0.1"])
    with pytest.raises(NLAError, match="in section teach"):
        load_pipeline_config(None, teach={"teacher_model": "x"})


def test_a_section_built_in_python_gets_its_paths_filled_in(tmp_path, fake_stages) -> None:
    from nla.train.rl.trainer import RLConfig

    cfg = PipelineConfig(run_dir=str(tmp_path / "r"), seed=5, rl=RLConfig(out_dir="ignored", seed=1, steps=3))
    run_pipeline(cfg, stop_after="rl")
    (rl,) = fake_stages["train_rl"]
    assert (rl["out_dir"], rl["seed"], rl["steps"]) == (str(tmp_path / "r" / "rl"), 5, 3)
    assert (rl["prompts_per_step"], rl["max_new_tokens"]) == (8, 150)  # RLConfig's own defaults, as given
    assert PipelineConfig().rl.prompts_per_step == 4  # the pipeline's defaults for the section
