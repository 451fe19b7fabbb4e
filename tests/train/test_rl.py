from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from nla.cli import main
from nla.models.ar import ActivationReconstructor
from nla.models.av import ActivationVerbalizer
from nla.models.target import load_target
from nla.train.rl.rollout import sampling_seed, step_rows
from nla.train.rl.trainer import RLConfig, RLTrainer, iter_metrics, train_rl

from helpers import accelerate_cpu_command, save_tiny_target

D = 64
RESPONSE = "<explanation>cooking pasta</explanation>"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one thread avoids oversubscription (10x slower otherwise)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_vectors(path: Path, n: int, seed: int) -> Path:
    v = torch.randn(n, D, generator=torch.Generator().manual_seed(seed)) * 3
    table = pa.table(
        {
            "activation_vector": pa.array(v.tolist(), pa.list_(pa.float32())),
            "doc_id": [f"{path.stem}-{i}" for i in range(n)],
        }
    )
    pq.write_table(table, path)
    return path


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory) -> dict[str, str]:
    """A tiny base model, an AV briefly fine-tuned to answer in tags (so some rollouts are valid and some
    not), an untrained AR, and two parquet files of random activations."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rl")
    base = save_tiny_target(root / "base", "llama")
    target = load_target(str(base))
    torch.manual_seed(0)
    av = ActivationVerbalizer.from_target(target, injection_scale=5.0, layer=1)
    av.model.requires_grad_(True)
    opt = torch.optim.AdamW(av.model.parameters(), lr=3e-3)
    vecs = torch.randn(8, D)
    for _ in range(70):
        av.sft_loss(av.encode(vecs, [RESPONSE] * 8)).backward()
        opt.step()
        opt.zero_grad()
    av.model.eval()
    av.save_pretrained(root / "av")
    ActivationReconstructor.from_target(target, 1).save_pretrained(root / "ar")
    return {
        "root": str(root),
        "av": str(root / "av"),
        "ar": str(root / "ar"),
        "data": str(write_vectors(root / "rl.parquet", 16, 1)),
        "eval": str(write_vectors(root / "eval.parquet", 8, 2)),
    }


def config(run_dirs: dict[str, str], out: Path, **kw) -> RLConfig:
    base = dict(
        av=run_dirs["av"],
        ar=run_dirs["ar"],
        data=run_dirs["data"],
        out_dir=str(out),
        steps=2,
        prompts_per_step=2,
        group_size=4,
        max_new_tokens=16,
        eval_every=0,
        save_every=0,
        train_batch_size=4,
    )
    base.update(kw)
    return RLConfig(**base)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def test_constant_rewards_give_no_policy_gradient(run_dirs, tmp_path) -> None:
    cfg = config(run_dirs, tmp_path / "run", steps=1, kl_coef=0.0, ar_lr=0.0, av_lr=1e-2)
    res = train_rl(cfg, reward_fn=lambda ro: torch.full((len(ro.responses.ids),), 0.7))
    assert res.last is not None and res.last.reward_std < 1e-6 and res.last.pg_loss == 0.0
    before, after = weights(Path(run_dirs["av"])), weights(tmp_path / "run" / "final" / "av")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # zero advantages: AdamW moved nothing


def test_one_step_raises_logprob_of_positive_advantage_sample(run_dirs, tmp_path) -> None:
    tr = RLTrainer(config(run_dirs, tmp_path / "run", kl_coef=0.0, ar_lr=0.0, av_lr=1e-4))
    ro = tr.rollout(tr.step_vectors(0), 0)
    ids = ro.responses.ids

    def seq_logp() -> float:
        with torch.no_grad():
            lp, _ = tr._logprobs(tr.av.model, tr.av.model, ro.vectors[:1], ids[:1])
        return float(lp.sum())

    adv = torch.zeros(len(ids))
    for sign in (1.0, -1.0):
        old = seq_logp()
        adv[0] = sign
        stats = tr.update_av(ro, adv)
        assert stats["ratio_mean"] == pytest.approx(1.0, abs=1e-5) and stats["av_skipped"] == 0
        assert (seq_logp() - old) * sign > 1e-3  # positive advantage: more likely; negative: less likely


def test_metrics_eval_and_final_checkpoints(run_dirs, tmp_path) -> None:
    out = tmp_path / "run"
    res = train_rl(
        config(run_dirs, out, eval_data=run_dirs["eval"], eval_every=1, eval_rows=4, av_lr=1e-4, ppo_epochs=2)
    )
    records = list(iter_metrics(out))
    steps = [r for r in records if not r.get("final")]
    assert [r["step"] for r in steps] == [1, 2] and records[-1]["final"]
    for key in (
        "reward_mean",
        "reward_std",
        "fve",
        "kl",
        "clip_frac",
        "len_mean",
        "len_p50",
        "len_p90",
        "len_max",
        "tag_failure_rate",
        "truncation_rate",
        "cjk_rate",
        "valid_rate",
        "ar_loss",
        "time_generate_s",
        "time_av_s",
        "time_ar_s",
        "time_step_s",
    ):
        assert key in steps[0], key
    assert "eval/fve_nrm" in steps[0] and "eval/frozen_ar/fve_nrm" in steps[0] and "eval/fve_shuffled" in steps[0]
    assert 0 < steps[0]["valid_rate"] < 1 and steps[0]["reward_std"] > 0  # a mix of valid and invalid rollouts
    assert all(r["kl"] >= 0 for r in steps) and steps[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # step 1: policy = ref
    assert steps[1]["kl"] > 0
    assert res.final_eval["retrieval_top1_at_4"] >= 0 and "frozen_ar/fve_nrm" in res.final_eval
    av = ActivationVerbalizer.from_pretrained(out / "final" / "av")
    ar = ActivationReconstructor.from_pretrained(out / "final" / "ar")
    assert av.marker.token_id == ActivationVerbalizer.from_pretrained(run_dirs["av"]).marker.token_id
    sft_ar = weights(Path(run_dirs["ar"]))
    assert any(not torch.equal(v, weights(out / "final" / "ar")[k]) for k, v in sft_ar.items())  # the AR trained
    assert ar.d_model == D


def test_resume_after_crash_equals_uninterrupted_run(run_dirs, tmp_path) -> None:
    kw = dict(steps=3, save_every=1, av_lr=1e-3, ar_lr=1e-3, contrastive_weight=0.5, length_target=4, length_coef=0.01)
    train_rl(config(run_dirs, tmp_path / "a", **kw))

    def crash(step) -> None:
        if step.step == 2:
            raise KeyboardInterrupt  # after step 2's update, before its checkpoint

    with pytest.raises(KeyboardInterrupt):
        train_rl(config(run_dirs, tmp_path / "b", **kw), on_step=crash)
    assert [r["step"] for r in iter_metrics(tmp_path / "b")] == [1, 2]
    res = train_rl(config(run_dirs, tmp_path / "b", **kw))
    assert res.resumed_from == 1
    for part in ("av", "ar"):
        a, b = weights(tmp_path / "a" / "final" / part), weights(tmp_path / "b" / "final" / part)
        assert all(torch.equal(a[k], b[k]) for k in a), part

    def clean(out: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if not k.startswith(("time_", "elapsed"))} for r in iter_metrics(out)]

    assert json.dumps(clean(tmp_path / "a")) == json.dumps(clean(tmp_path / "b"))


def test_reward_terms_are_logged_and_sum_to_the_reward(run_dirs, tmp_path) -> None:
    kw = dict(steps=1, ar_lr=0.0, contrastive_weight=0.5, length_target=4, length_coef=0.01)
    train_rl(config(run_dirs, tmp_path / "terms", **kw))
    (rec,) = iter_metrics(tmp_path / "terms")
    terms = {k: v for k, v in rec.items() if k.startswith("reward/")}
    assert list(terms) == ["reward/reconstruction", "reward/format", "reward/contrastive", "reward/length"]
    assert sum(terms.values()) == pytest.approx(rec["reward_mean"], abs=1e-5)
    assert terms["reward/format"] == pytest.approx(-2 * (1 - rec["valid_rate"]))
    assert terms["reward/length"] <= 0 and terms["reward/reconstruction"] < 0

    train_rl(config(run_dirs, tmp_path / "custom", steps=1), reward_fn=lambda ro: torch.full((len(ro.valid),), 0.7))
    (rec,) = iter_metrics(tmp_path / "custom")
    assert [k for k in rec if k.startswith("reward/")] == ["reward/custom"]
    assert rec["reward/custom"] == pytest.approx(0.7) == rec["reward_mean"]


def test_resume_from_a_checkpoint_with_only_the_torch_rng(run_dirs, tmp_path) -> None:
    """Checkpoints written before RL shared the SFT loop's machinery saved only the torch RNG stream."""
    kw = dict(av_lr=1e-3, ar_lr=1e-3, save_every=1)
    train_rl(config(run_dirs, tmp_path / "a", steps=2, **kw))
    train_rl(config(run_dirs, tmp_path / "b", steps=1, **kw))
    state_path = tmp_path / "b" / "checkpoint" / "state.pt"
    state = torch.load(state_path, weights_only=True)
    state["rng"] = {"torch": state["rng"]["torch"]}
    torch.save(state, state_path)
    res = train_rl(config(run_dirs, tmp_path / "b", steps=2, **kw))
    assert res.resumed_from == 1
    for part in ("av", "ar"):
        a, b = weights(tmp_path / "a" / "final" / part), weights(tmp_path / "b" / "final" / part)
        assert all(torch.equal(a[k], b[k]) for k in a), part


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_log_with_tensorboard(run_dirs, tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_rl(config(run_dirs, tmp_path / "tb", log_with="tensorboard", ar_lr=0.0))
    acc = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"reward_mean", "reward/reconstruction", "reward/format", "kl"} <= tags
    records = [r for r in iter_metrics(tmp_path / "tb")]
    assert [e.value for e in acc.Scalars("reward_mean")] == pytest.approx([r["reward_mean"] for r in records])


def test_step_rows_visit_every_row_once_per_pass() -> None:
    rows = [r for s in range(6) for r in step_rows(8, 4, s, seed=3)]  # 3 passes over 8 rows
    assert all(sorted(rows[i : i + 8]) == list(range(8)) for i in (0, 8, 16))
    assert rows[:8] != rows[8:16]  # a new order each pass
    assert step_rows(8, 4, 1, seed=3) == rows[4:8] and step_rows(8, 4, 1, seed=4) != rows[4:8]
    seeds = {sampling_seed(0, s, r) for s in range(50) for r in range(8)}
    assert len(seeds) == 400


RUNNER = """
import hashlib, sys, torch
torch.set_num_threads(1)
from nla.train.rl.trainer import RLConfig, RLTrainer
av, ar, data, out = sys.argv[1:5]
tr = RLTrainer(RLConfig(av=av, ar=ar, data=data, out_dir=out, steps=2, prompts_per_step=2, group_size=4,
                        max_new_tokens=16, eval_every=0, save_every=0, av_lr=1e-3, ar_lr=1e-3, train_batch_size=4))
tr.run()
h = hashlib.sha256()
for model in (tr.av.model, tr.ar):
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode()); h.update(p.detach().cpu().numpy().tobytes())
open(f"{out}/hash-{tr.rank}-of-{tr.world}.txt", "w").write(h.hexdigest())
"""


def test_two_processes_end_with_identical_weights(run_dirs, tmp_path) -> None:
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    out = tmp_path / "ddp"
    out.mkdir()
    cmd = accelerate_cpu_command(
        str(runner),
        run_dirs["av"],
        run_dirs["ar"],
        run_dirs["data"],
        str(out),
    )
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    hashes = [(out / f"hash-{r}-of-2.txt").read_text() for r in range(2)]
    assert hashes[0] == hashes[1]
    before, after = weights(Path(run_dirs["av"])), weights(out / "final" / "av")
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the AV did train
    assert [r["step"] for r in iter_metrics(out)] == [1, 2]  # only rank 0 writes metrics


def test_cli_help_and_errors(run_dirs, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["train", "rl", "--help"])
    assert e.value.code == 0 and "--group-size" in capsys.readouterr().out
    assert main(["train", "rl", "--ar", run_dirs["ar"], "--data", run_dirs["data"]]) == 2
    assert "needs --av" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "rl",
                "--av",
                run_dirs["av"],
                "--ar",
                run_dirs["ar"],
                "--data",
                run_dirs["data"],
                "--prompts-per-step",
                "3",
                "--group-size",
                "0",
            ]
        )
        == 2
    )
