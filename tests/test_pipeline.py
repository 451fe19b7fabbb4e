from __future__ import annotations

import json
import random

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
        None, run_dir=str(tmp_path / "run"), model=str(model), layer=1, corpus=str(corpus), positions_per_doc=2,
        skip=2, max_tokens=48, split_fractions=[0.25, 0.25, 0.25, 0.25], eval_rows=4, ar_steps=2, ar_batch_size=4,
        av_steps=2, av_batch_size=4, rl_steps=1, rl_prompts_per_step=2, rl_group_size=2, rl_max_new_tokens=8,
        eval_max_new_tokens=8, save_every=0, export_rank=2, refit_rows=4, refit_steps=1, refit_batch_size=4,
        distill_steps=1, teach_options={"tail_tokens": 4, "top_k": 2},
        av_sft_options={"samples": 1, "sample_tokens": 8}, rl_options={"eval_every": 0, "eval_rows": 4},
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
    assert cpu.model == "smollm2-135m" and cpu.layer == 20 and cpu.teacher == "offline" and cpu.bf16 == "false"
    gpu = load_pipeline_config("gpu")
    assert gpu.bf16 == "true" and gpu.teacher in ("anthropic", "hf") and gpu.rl_steps > cpu.rl_steps
    with pytest.raises(NLAError, match="unknown preset"):
        load_pipeline_config("tpu")
    with pytest.raises(NLAError, match="unknown"):
        load_pipeline_config("cpu-smollm2", rl_stepz=3)
    with pytest.raises(NLAError, match="needs the earlier stage"):
        run_pipeline(cpu, start="rl")
    with pytest.raises(SystemExit) as e:
        main(["train", "pipeline", "--help"])
    assert e.value.code == 0 and "--stop-after" in capsys.readouterr().out
    assert main(["train", "pipeline", "--preset", "nope"]) == 2
