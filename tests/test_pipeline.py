from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from nla.cli import main
from nla.common.errors import NLAError
from nla.data.documents import Document, write_jsonl
from nla.explain.trust import TokenLookup, find_lookup
from nla.pipeline import (
    STAGES,
    PipelineConfig,
    load_pipeline_config,
    parse_mix,
    parse_schedule,
    preset_names,
    run_pipeline,
)

from helpers import save_tiny_target

WORDS = "the quick brown fox jumps over lazy dog Paris capital France language model add return pasta".split()


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _inputs(folder: Path) -> tuple[Path, Path]:
    """A 24-document corpus and a tiny random Qwen2 (another architecture than the embedded Llama)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    docs = [Document(f"d{i:02d}", text=" ".join(rng.choice(WORDS) for _ in range(30))) for i in range(24)]
    corpus = write_jsonl(docs, folder / "corpus.jsonl")
    model = folder / "tiny-qwen2"
    if not model.exists():
        save_tiny_target(model, "qwen2")
    return corpus, model


def _tiny(folder: Path, run: Path) -> PipelineConfig:
    corpus, model = _inputs(folder)
    return load_pipeline_config(
        "tiny", run_dir=str(run), model=str(model), layer=1, keep_last=2, extract={"corpus": str(corpus)}
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, PipelineConfig]:
    """The whole recipe (the tiny preset: every stage on) once, uninterrupted, on a tiny Qwen2."""
    folder = tmp_path_factory.mktemp("pipeline")
    cfg = _tiny(folder, folder / "run")
    torch.set_num_threads(1)
    res = run_pipeline(cfg)
    assert set(res.stages.values()) == {"ran"}
    return folder, cfg


def test_the_whole_recipe_runs_end_to_end_on_another_architecture(finished_run, capsys) -> None:
    folder, cfg = finished_run
    run = folder / "run"
    assert all((run / s / "DONE").exists() for s in STAGES)
    # finished stages keep their final weights, not their resume checkpoints nor the keep_last snapshots
    assert (run / "ar_sft" / "final").exists() and not [p for p in run.rglob("checkpoint*") if p.is_dir()]
    # corpora: frozen files whose hash is the one extract recorded in its sidecar
    corpora = json.loads((run / "corpora" / "corpora.json").read_text())
    assert sorted(corpora) == ["main", "scenes", "topics"]
    for name, folder_name in (("main", "acts"), ("topics", "topics"), ("scenes", "scenes")):
        sidecar = yaml.safe_load((run / "extract" / folder_name / "nla_meta.yaml").read_text())
        assert sidecar["provenance"]["corpus_sha256"] == corpora[name]["sha256"], name
    # every stage ran on the current pair: rl from the SFT pair, the self-text repeats from the RL AR
    selftext = json.loads((run / "selftext" / "DONE").read_text())
    assert [(r["steps"], r["lr"]) for r in selftext["repeats"]] == [(1, 1e-4), (1, 1e-4), (1, 2e-4)]
    init = yaml.safe_load((run / "selftext" / "ar_1" / "final" / "nla_meta.yaml").read_text())
    assert init["critic"]["extraction_layer_index"] == 1
    for k in (1, 2, 3):
        assert (run / "selftext" / f"ar_{k}" / "final").exists()
    card = json.loads((run / "card" / "card.json").read_text())
    assert card == json.loads((run / "ship" / "nla" / "card.json").read_text())
    assert {"ar_sft_teacher", "av_sft_round_trip", "rl_current_ar", "shipped", "shipped best-of-2"} <= set(card)
    assert card["compute"]["command"].startswith("nla train pipeline") and "nla " in card["compute"]["code_version"]
    assert card["compute"]["corpora_sha256"]["main"] == corpora["main"]["sha256"]
    assert card["compute"]["selftext_seconds"] > 0
    report = json.loads((run / "faithfulness" / "greedy" / "report.json").read_text())
    assert report  # the faithfulness suite ran on the final pair
    ship = run / "ship" / "nla"
    assert sorted(p.name for p in ship.iterdir()) == ["ar", "av", "card.json", "token_lookup.safetensors"]
    assert find_lookup(ship / "av") == ship / "token_lookup.safetensors"  # the verdict's reference is found
    assert TokenLookup.load(ship / "token_lookup.safetensors").meta["layer"] == "1"  # the layer of its data
    assert (ship / "ar" / "adapter_model.safetensors").exists() and (ship / "ar" / "value_head.safetensors").exists()
    assert not (ship / "ar" / "tokenizer.json").exists() and not (ship / "av" / "model.safetensors").exists()
    explain = ["explain", "fox dog", "--av", str(ship / "av"), "--ar", str(ship / "ar"), "--max-new-tokens", "4"]
    assert main(explain) == 0
    capsys.readouterr()
    ran: list[str] = []
    again = run_pipeline(cfg, on_stage=ran.append)
    assert set(again.stages.values()) == {"skipped"} and ran == []


def test_a_rebuild_copies_the_frozen_corpora_and_checks_their_hashes(finished_run, tmp_path) -> None:
    import shutil

    folder, _ = finished_run
    recorded = json.loads((folder / "run" / "corpora" / "corpora.json").read_text())
    cfg = _tiny(folder, tmp_path / "again")
    cfg.corpora.copy_from = str(folder / "run" / "corpora")
    run_pipeline(cfg, stop_after="corpora")  # no model runs: every corpus is copied in
    again = json.loads((tmp_path / "again" / "corpora" / "corpora.json").read_text())
    assert {k: v["sha256"] for k, v in again.items()} == {k: v["sha256"] for k, v in recorded.items()}
    tampered = tmp_path / "tampered"
    shutil.copytree(folder / "run" / "corpora", tampered)
    scenes = tampered / "scenes.jsonl"
    scenes.write_text(scenes.read_text().replace('"content": "', '"content": "Once ', 1))
    cfg = _tiny(folder, tmp_path / "third")
    cfg.corpora.copy_from = str(tampered)
    with pytest.raises(NLAError, match="corpus scenes .* not the pinned"):
        run_pipeline(cfg, stop_after="corpora")


def test_sigkill_in_two_stages_then_resume_gives_the_same_card(finished_run, tmp_path) -> None:
    """Killed with SIGKILL inside av_sft and inside selftext (its second AR repeat), resumed: the card equals the
    uninterrupted run's."""
    folder, _ = finished_run
    run = tmp_path / "run"
    _tiny(folder, run)  # the same inputs
    code = (
        "import sys, torch; torch.set_num_threads(1); sys.path.insert(0, sys.argv[3]);"
        "from nla.pipeline import load_pipeline_config, run_pipeline;"
        "run_pipeline(load_pipeline_config('tiny', run_dir=sys.argv[1], model=sys.argv[2], layer=1,"
        " extract={'corpus': sys.argv[4]}))"
    )
    argv = [sys.executable, "-c", code, str(run), str(folder / "tiny-qwen2"), str(Path(__file__).parent),
            str(folder / "corpus.jsonl")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed_in = []
    for stage, inside in (("av_sft", "av_sft"), ("selftext", "selftext/ar_2")):
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while not (run / inside).exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        done_before = (run / stage / "DONE").exists()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        killed_in.append((stage, done_before))
    assert not (run / "ship" / "DONE").exists()
    assert killed_in[0] == ("av_sft", False)  # the first kill landed inside the stage
    greedy = run / "selftext" / "greedy.parquet"
    written = greedy.stat().st_mtime_ns
    resumed_stages = run_pipeline(_tiny(folder, run)).stages  # the same command, here in-process
    assert greedy.stat().st_mtime_ns == written  # the AV's text is not written again by the resumed stage
    assert resumed_stages["corpora"] == "skipped" and resumed_stages["selftext"] == "ran"
    av_done = json.loads((run / "av_sft" / "DONE").read_text())  # its time counts the killed attempt too
    assert av_done["attempts"] == 2 and av_done["seconds"] >= av_done["seconds_last_attempt"]
    assert json.loads((run / "selftext" / "DONE").read_text())["repeats"][0] == {"repeat": 1, "steps": 1, "lr": 1e-4}
    resumed = json.loads((run / "card" / "card.json").read_text())
    reference = json.loads((folder / "run" / "card" / "card.json").read_text())
    assert resumed["ladder"] == pytest.approx(reference["ladder"], abs=1e-5)
    assert [e.get("shipped") for e in resumed["examples"]] == [e.get("shipped") for e in reference["examples"]]


def test_presets_and_errors(tmp_path, capsys) -> None:
    assert {"smollm2", "cpu-smollm2", "gpu", "tiny"} <= set(preset_names())
    smol = load_pipeline_config("smollm2", run_dir=str(tmp_path / "x"))
    assert load_pipeline_config("cpu-smollm2", run_dir=str(tmp_path / "x")) == smol  # the old name, an alias
    assert smol.model == "smollm2-135m" and smol.layer is None and smol.teach.style == "open" and smol.bf16 == "false"
    assert smol.teach.tail_tokens == 0 and smol.selftext.greedy_rows > 0 and not smol.run_rl
    assert smol.corpora.wanted() == ["locale", "topics", "topic_prose", "scenes"]
    gpu = load_pipeline_config("gpu")
    assert gpu.bf16 == "true" and gpu.run_rl and gpu.mix.selftext == smol.mix.selftext  # the same recipe
    with pytest.raises(NLAError, match="unknown preset"):
        load_pipeline_config("tpu")
    with pytest.raises(NLAError, match="unknown"):
        load_pipeline_config("smollm2", rl_stepz=3)
    with pytest.raises(NLAError, match="unknown"):
        load_pipeline_config("smollm2", rl={"stepz": 3})
    with pytest.raises(NLAError, match="unknown data source 'local/av_sft'"):
        load_pipeline_config("smollm2", mix={"av_sft": {"local/av_sft": 1}})
    with pytest.raises(NLAError, match="whole number"):
        load_pipeline_config("smollm2", mix={"ar_sft": {"ar_sft": 1.5}})
    with pytest.raises(NLAError, match="STEPS@LR"):
        load_pipeline_config("smollm2", selftext={"schedule": ["400"]})
    with pytest.raises(NLAError, match="needs the earlier stage"):
        run_pipeline(smol, start="rl")
    with pytest.raises(SystemExit) as e:
        main(["train", "pipeline", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--stop-after" in out and all(f"  {s} " in out for s in STAGES)
    assert main(["train", "pipeline", "--preset", "nope"]) == 2


def test_mixes_and_schedules() -> None:
    assert parse_mix({"a/ar_sft": 2, "b": 0, "c": 1.0}, "m") == {"a/ar_sft": 2, "c": 1}
    assert parse_mix("self/greedy=2, ar_sft=1", "m") == {"self/greedy": 2, "ar_sft": 1}
    assert parse_schedule(["2x400@1e-4", "300@2e-4"]) == [(400, 1e-4), (400, 1e-4), (300, 2e-4)]
    for bad in ({}, {"a": 0}, {"a": -1}, "a", {"a": "x"}):
        with pytest.raises(NLAError):
            parse_mix(bad, "m")
    for bad in (["0x4@1"], ["4@0"], ["4@x"], ["x@1"]):
        with pytest.raises(NLAError):
            parse_schedule(bad)


# ------------------------------------------------------------ the config each stage receives (stages faked)


class _Result:
    def __init__(self, **kw) -> None:
        self.__dict__.update(kw)


@pytest.fixture
def fake_stages(monkeypatch):
    """Replace every library call of nla.pipeline.stages by one that records its config; returns the records."""
    import dataclasses

    import pyarrow as pa
    import pyarrow.parquet as pq

    import nla.pipeline.stages as stages

    seen: dict[str, list] = {}

    def record(name, cfg, result):
        seen.setdefault(name, []).append(dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg)
        return result

    def touch(path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"explanation": ["a", "b"], "tag_ok": [True] * 2, "truncated": [False] * 2}), path)

    def fake_verbalize(cfg):
        touch(cfg.out)
        return record("verbalize", cfg, cfg.out)

    def fake_teach(cfg):
        touch(cfg.out)
        return record("teach", cfg, _Result(n_rows=2, n_kept=2, drops={}))

    def fake_corpus(spec, limit=None):
        return [Document("d0", text="a b c")]

    trained = _Result(steps=1, final_loss=0.0, final_eval={}, extra={}, last=None)
    fakes = {
        "load_corpus": fake_corpus,
        "build_supplementary": lambda name, out, **kw: record("corpus", {"name": name, **kw}, write_jsonl(
            [Document(f"{name}0", text="x y")], out)),
        "extract": lambda c: record("extract", c, _Result(n_rows=8, rows_per_split=dict.fromkeys(
            ("av_sft", "ar_sft", "rl", "eval"), 2), n_used_docs=4, seconds=0)),
        "teach": fake_teach,
        "train_ar": lambda c: record("train_ar", c, trained),
        "train_av": lambda c: record("train_av", c, (None, trained)),
        "train_rl": lambda c: record("train_rl", c, trained),
        "verbalize": fake_verbalize,
        "evaluation_card": lambda c: record("evaluation_card", c, {"ladder": {}}),
        "format_card": lambda card: "",
    }  # fmt: skip
    for name, fn in fakes.items():
        monkeypatch.setattr(stages, name, fn)
    return seen


def test_the_smollm2_preset_gives_every_stage_its_recipe(tmp_path, fake_stages) -> None:
    run = tmp_path / "run"
    run_pipeline(load_pipeline_config("smollm2", run_dir=str(run)), stop_after="card")
    r, t = str(run), f"{run}/teach"
    assert [c["name"] for c in fake_stages["corpus"]] == ["locale", "topics", "topic_prose", "scenes"]
    main_ex, *supp = fake_stages["extract"]
    assert (main_ex["corpus"], main_ex["layer"], main_ex["model"]) == (f"{r}/corpora/main.jsonl", None, "smollm2-135m")
    assert [e["split_fractions"] for e in supp] == [[0.5, 0.5, 0.0, 0.0]] * 4
    taught = {(c["out"], c["limit"], c["style"], c["tail_tokens"]) for c in fake_stages["teach"]}
    assert (f"{t}/eval.parquet", 512, "open", 0) in taught and (f"{t}/ar_sft.parquet", 2000, "open", 0) in taught
    assert (f"{t}/topics_ar_sft.parquet", 0, "open", 0) not in taught  # no mix names it: not taught
    ar_sft, *repeats = fake_stages["train_ar"]
    assert ar_sft["data"].split(",") == [f"{t}/{s}.parquet" for s in ("ar_sft", "locale_ar_sft", "scenes_ar_sft",
                                                                        "topic_prose_ar_sft")]  # fmt: skip
    assert (ar_sft["lora"], ar_sft["baseline_data"], ar_sft["init"]) == (True, f"{r}/extract/acts", "")
    (av_sft,) = fake_stages["train_av"]
    assert len(av_sft["data"].split(",")) == 6 and av_sft["lora"]
    assert "train_rl" not in fake_stages  # the preset keeps RL off
    greedy, sampled = fake_stages["verbalize"]
    assert (greedy["av"], greedy["do_sample"], greedy["limit"]) == (f"{r}/av_sft/final", False, 6000)
    assert (sampled["do_sample"], sampled["temperature"], sampled["every"]) == (True, 0.7, 3)
    assert [(x["max_steps"], x["lr"]) for x in repeats] == [(400, 1e-4)] * 2 + [(400, 2e-4)] * 8
    assert repeats[0]["init"] == f"{r}/ar_sft/final" and repeats[1]["init"] == f"{r}/selftext/ar_1/final"
    data = repeats[0]["data"].split(",")
    assert data.count(f"{r}/selftext/greedy.parquet") == 2 and data.count(f"{t}/ar_sft.parquet") == 1
    (card,) = fake_stages["evaluation_card"]
    assert (card["best_of"], card["rows"], card["av"]) == (4, 128, "")
    assert card["earlier"].startswith("shipped-before=") and card["earlier"].endswith("default_nla/card.json")
    assert card["stage"] == [f"shipped={r}/av_sft/final,{r}/ar_sft/final"]  # the fakes wrote no checkpoint
    compute = yaml.safe_load((run / "card" / "compute.yaml").read_text())
    assert "command" in compute and compute["corpora_sha256"]["main"]


def test_the_lexicon_corpora_are_built_from_their_own_chats_and_extracted_as_asked(tmp_path, fake_stages) -> None:
    corpora = {"lexicon_chats": 12, "lexicon_prose": True, "positions": {"lexicon": 2}}
    cfg = load_pipeline_config("smollm2", run_dir=str(tmp_path / "r"), corpora=corpora)
    assert cfg.corpora.wanted()[-2:] == ["lexicon", "lexicon_prose"]
    run_pipeline(cfg, stop_after="extract")
    per_doc = {Path(e["out"]).name: e["positions_per_doc"] for e in fake_stages["extract"]}
    assert per_doc == {"acts": 10, "locale": 10, "topics": 10, "topic_prose": 10, "scenes": 10, "lexicon": 2,
                       "lexicon_prose": 10}  # fmt: skip
    calls = {c["name"]: c for c in fake_stages["corpus"]}
    corpora = tmp_path / "r" / "corpora"
    assert calls["lexicon"]["n_chat"] == 12 and calls["lexicon"]["max_new_tokens"] == cfg.corpora.max_new_tokens
    assert calls["lexicon_prose"]["chats"] == corpora / "lexicon.jsonl"
    assert calls["topic_prose"]["chats"] == corpora / "topics.jsonl" and calls["scenes"]["n_chat"] == 380


@pytest.mark.parametrize("preset", ["smollm2", "gpu", "tiny"])
def test_every_preset_configures_every_stage(preset, tmp_path, fake_stages) -> None:
    cfg = load_pipeline_config(preset, run_dir=str(tmp_path / "r"))
    res = run_pipeline(cfg, stop_after="card")
    assert all(res.stages[s] == "ran" for s in STAGES[: STAGES.index("card") + 1])
    assert len(fake_stages["train_rl"] if cfg.run_rl else []) == int(cfg.run_rl)
    assert len(fake_stages["verbalize"]) == 1 + (cfg.selftext.sampled_rows > 0) + (cfg.expert.rows > 0)


def test_the_shipped_rows_are_kept_only_when_the_held_out_rows_are_the_same(tmp_path, fake_stages, monkeypatch) -> None:
    import nla.pipeline.stages as stages

    calls: list[str] = []

    def card(cfg):
        calls.append(cfg.earlier)
        if cfg.earlier:
            raise NLAError(f"--earlier {cfg.earlier} was not measured on these held-out rows: 4 rows, this card 8")
        return {"ladder": {}}

    monkeypatch.setattr(stages, "evaluation_card", card)
    run_pipeline(load_pipeline_config("smollm2", run_dir=str(tmp_path / "r")), stop_after="card")
    assert len(calls) == 2 and calls[0].startswith("shipped-before=") and calls[1] == ""  # warned, then without
    assert (tmp_path / "r" / "card" / "DONE").exists()


def test_dotted_flags_nested_yaml_and_precedence(tmp_path, fake_stages) -> None:
    """defaults < --preset < --config < flags, merged key by key inside the sections."""
    config = tmp_path / "mine.yaml"
    config.write_text("seed: 3\nrun_rl: true\nrl:\n  steps: 7\n  kl_coef: 0.5\nselftext:\n  ar:\n    batch_size: 4\n")
    argv = ["train", "pipeline", "--preset", "smollm2", "--config", str(config), "--run-dir", str(tmp_path / "r"),
            "--rl.kl-coef", "0.02", "--ar-sft.max-steps", "300", "--selftext.schedule", "2x5@1e-3",
            "--mix.ar-sft", "ar_sft=3", "--teach-rows", "ar_sft=7", "--stop-after", "card"]  # fmt: skip
    assert main(argv) == 0
    (rl,) = fake_stages["train_rl"]
    assert (rl["kl_coef"], rl["steps"], rl["seed"]) == (0.02, 7, 3)  # flag > config > preset; shared seed
    ar_sft, *repeats = fake_stages["train_ar"]
    teach = str(tmp_path / "r" / "teach")
    assert ar_sft["max_steps"] == 300 and ar_sft["data"].split(",") == [f"{teach}/ar_sft.parquet"] * 3 + [
        f"{teach}/{s}_ar_sft.parquet" for s in ("locale", "scenes", "topic_prose")
    ]  # merged over the preset's mix
    got = [(x["max_steps"], x["lr"], x["batch_size"], x["seed"]) for x in repeats]
    assert got == [(5, 1e-3, 4, 4), (5, 1e-3, 4, 5)]
    assert repeats[0]["init"] == str(tmp_path / "r/rl/final/ar") or repeats[0]["init"].endswith("ar_sft/final")
    assert [t["limit"] for t in fake_stages["teach"] if t["out"].endswith("/ar_sft.parquet")] == [7]
    saved = yaml.safe_load((tmp_path / "r" / "pipeline.yaml").read_text())
    assert saved["rl"]["kl_coef"] == 0.02 and saved["mix"]["ar_sft"]["ar_sft"] == 3
    assert "out_dir" not in saved["rl"] and "seed" not in saved["rl"] and "init" not in saved["selftext"]["ar"]
    assert load_pipeline_config(None, tmp_path / "r" / "pipeline.yaml") == load_pipeline_config(
        "smollm2", config, run_dir=str(tmp_path / "r"), **{"rl.kl_coef": 0.02, "ar_sft.max_steps": 300},
        selftext={"schedule": ["2x5@1e-3"]}, mix={"ar_sft": {"ar_sft": 3}}, teach_rows={"ar_sft": 7},
    )  # fmt: skip


def test_unknown_and_pipeline_owned_keys_are_one_clear_error(tmp_path, capsys) -> None:
    def error(text: str) -> str:
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        assert main(["train", "pipeline", "--config", str(path), "--run-dir", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("nla: error: ") and err.count("\n") == 1, err
        return err

    top = error("rl_steps: 3\n")
    assert "rl_steps" in top and "PipelineConfig" in top and "known:" in top and " rl," in top
    inner = error("rl:\n  kl_coeff: 0.1\n")
    assert "in section rl" in inner and "kl_coeff" in inner and "kl_coef" in inner and "out_dir" not in inner
    deep = error("selftext:\n  ar:\n    stepz: 1\n")
    assert "in section selftext.ar" in deep and "batch_size" in deep
    assert "rl.out_dir cannot be set" in error("rl:\n  out_dir: elsewhere\n")
    assert "selftext.ar.lr cannot be set" in error("selftext:\n  ar:\n    lr: 0.1\n")
    assert "top-level option seed" in error("ar_sft:\n  seed: 1\n")
    assert "section rl must be a mapping" in error("rl: 3\n")
    assert "unknown data source" in error("mix:\n  av_sft: {avsft: 1}\n")
    assert not (tmp_path / "r").exists()  # nothing was started
    with pytest.raises(SystemExit):  # no flag for what the pipeline fills in, nor for unknown options
        main(["train", "pipeline", "--rl.out-dir", "x"])
    with pytest.raises(SystemExit):
        main(["train", "pipeline", "--rl.kl-coeff", "0.1"])


def test_a_stage_clock_adds_up_its_attempts_and_forgets_redone_stages(tmp_path) -> None:
    from nla.pipeline.clock import StageClock, read_clock, reset_clock

    with StageClock(tmp_path, "teach", every=0.01) as first:
        time.sleep(0.3)
        assert read_clock(tmp_path)["teach"]["seconds"] >= 0.1  # saved while it runs: a SIGKILL keeps this much
    with StageClock(tmp_path, "teach", every=0.01) as second:
        time.sleep(0.02)
    assert second.attempts == 2 and second.seconds() >= first.seconds() + 0.02 - 0.001  # saved to the ms
    assert read_clock(tmp_path)["teach"] == {"seconds": round(second.seconds(), 3), "attempts": 2}
    with StageClock(tmp_path, "card"):
        pass
    reset_clock(tmp_path, ["card", "faithfulness"])
    assert set(read_clock(tmp_path)) == {"teach"}
