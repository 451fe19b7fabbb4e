"""Joint RL (``nla train rl``): GRPO on the AV with rewards from the CURRENT AR, which keeps training.

One step, for ``prompts_per_step`` activations (each rank takes its own slice), phase by phase:

1. **rollout** (:mod:`.rollout`): ``group_size`` explanations per vector, sampled from the AV with the vector
   injected (temperature, no top-k/top-p), cut at ``max_new_tokens``; invalid = no complete tag pair or truncated;
2. **score** (:mod:`.rewards`): a weighted sum of named terms (reconstruction ``-mse_nrm`` from the current AR,
   the ``-2`` format penalty, the optional contrastive and length terms), each logged as ``reward/<name>``;
   advantages per group (:func:`nla.core.rl_math.grpo_advantages`);
3. **AV update** (:mod:`.update`): clipped surrogate + ``kl_coef`` * k3 KL to the frozen SFT AV (a frozen copy;
   with LoRA the same model with its adapter disabled); AdamW with clipping, non-finite steps skipped;
4. **AR update** (:mod:`.update`): one supervised MSE step on the VALID rollouts, own optimizer.

This module is the orchestration: setup, the loop, DDP glue, evaluation, checkpoint/resume and logging, with
the SFT loop's machinery (:class:`nla.train.checkpoint.Checkpoint`, :class:`nla.train.tracking.Tracker`, so
``log_with`` adds TensorBoard/W&B). Everything runs with dropout off, so the first PPO epoch's ratio is exactly
1. Sampling is seeded per (step, rank), and checkpoints hold the trainable weights, both optimizers, the RNG
streams and the step: a resumed run equals an uninterrupted one. Multi-GPU: ``accelerate launch -m nla.cli
train rl ...`` (DDP; gradients are all-reduced and losses normalised by GLOBAL counts, so any number of
ranks gives the same update as one process).

>>> res = train_rl(RLConfig(av="runs/av/final", ar="runs/ar/final", data="runs/acts", steps=50))  # doctest: +SKIP
>>> res.final_eval["fve_nrm"], res.final_eval["frozen_ar/fve_nrm"]                              # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nla.common.config import config_to_dict
from nla.common.errors import NLAError
from nla.common.paths import atomic_write_text
from nla.core import rl_math
from nla.core.metrics import fve_nrm, mse_nrm
from nla.data.activations import load_vectors
from nla.evaluate.roundtrip import Baseline, response_stats, round_trip
from nla.models.ar import ActivationReconstructor
from nla.models.av import ActivationVerbalizer
from nla.models.lora import apply_lora, is_lora
from nla.train.checkpoint import Checkpoint, seed_all
from nla.train.loop import CHECKPOINT, bf16_autocast, reduce_sum, use_bf16
from nla.train.rl.config import RLConfig
from nla.train.rl.rewards import RewardInputs, RewardTerm, custom_term, reconstruct, reward_terms, total_reward
from nla.train.rl.rollout import Rollouts, sample_rollouts, sampling_seed, step_rows
from nla.train.rl.update import PolicyUpdate, ReconstructorUpdate
from nla.train.tracking import METRICS, Tracker, read_metrics

log = logging.getLogger(__name__)

STEP_KEY = "reward_mean"  # every step record has it; a final record does not (see Tracker.drop_after)
iter_metrics = read_metrics  # the records of <out_dir>/metrics.jsonl


@dataclass
class RLStep:
    """Statistics of one RL step (over all ranks); one line of metrics.jsonl."""

    step: int
    reward_mean: float
    reward_std: float
    fve: float  # fve_nrm of the valid sampled explanations under the current AR (before its update)
    valid_rate: float
    tag_failure_rate: float
    truncation_rate: float
    cjk_rate: float
    len_mean: float
    len_p50: float
    len_p90: float
    len_max: float
    kl: float  # k3 KL to the frozen SFT AV, mean over tokens, before the update
    clip_frac: float
    ratio_mean: float
    pg_loss: float
    av_grad_norm: float
    av_skipped: int
    ar_loss: float
    ar_grad_norm: float
    ar_skipped: int
    time_generate_s: float
    time_score_s: float
    time_av_s: float
    time_ar_s: float
    time_step_s: float
    eval: dict[str, float] = field(default_factory=dict)
    rewards: dict[str, float] = field(default_factory=dict)  # mean weighted value of each reward term

    def record(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("eval", "rewards")}
        out.update({f"reward/{k}": v for k, v in self.rewards.items()})
        out.update({f"eval/{k}": v for k, v in self.eval.items()})
        return out


@dataclass
class RLResult:
    steps: int
    out_dir: Path
    final_eval: dict[str, float]
    last: RLStep | None
    resumed_from: int | None
    elapsed_s: float


RewardFn = Callable[[Rollouts], torch.Tensor]


def _policy(av: ActivationVerbalizer, cfg: RLConfig) -> tuple[nn.Module | None, bool]:
    """Make the AV trainable; returns (the frozen KL reference or None = adapter disabled, merge LoRA on save)."""
    if is_lora(av.model):  # an SFT LoRA AV: keep training its adapter, reference = frozen copy
        ref = copy.deepcopy(av.model).requires_grad_(False)
        for name, p in av.model.named_parameters():
            p.requires_grad_("lora_" in name)
        return ref, cfg.merge_lora
    if cfg.lora:  # the adapter sits on the SFT weights, not on extraction.base_model: always merge
        av.model = apply_lora(av.model, r=cfg.lora_r, alpha=cfg.lora_alpha)
        return None, True
    ref = copy.deepcopy(av.model).requires_grad_(False)
    av.model.requires_grad_(True)
    return ref, cfg.merge_lora


def _adamw(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """AdamW at a constant ``lr`` on the trainable parameters, no weight decay."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)


class RLTrainer:
    """Holds the models, optimizers and state of a run; :meth:`run` is the loop (see the module doc).

    ``terms`` replaces the reward terms of the options (:func:`.rewards.reward_terms`); ``reward_fn`` replaces
    them with the one term ``custom``."""

    def __init__(
        self, cfg: RLConfig, *, reward_fn: RewardFn | None = None, terms: list[RewardTerm] | None = None
    ) -> None:
        from accelerate import Accelerator

        if not cfg.av or not cfg.ar or not cfg.data:
            raise NLAError("nla train rl needs --av (SFT AV dir), --ar (SFT AR dir) and --data (activations)")
        if reward_fn is not None and terms is not None:
            raise ValueError("give reward_fn or terms, not both")
        self.cfg = cfg
        self.terms = (
            [custom_term(reward_fn)] if reward_fn is not None else reward_terms(cfg) if terms is None else terms
        )
        self.accel = Accelerator(cpu=not torch.cuda.is_available())
        self.world, self.rank = self.accel.num_processes, self.accel.process_index
        if cfg.prompts_per_step % self.world:
            raise NLAError(f"prompts_per_step {cfg.prompts_per_step} is not divisible by the {self.world} processes")
        device = self.accel.device
        self.bf16 = use_bf16(cfg.bf16, device)
        self.train_vectors = load_vectors(cfg.data, cfg.split).vectors
        self.eval_set = load_vectors(cfg.eval_data, cfg.eval_split) if cfg.eval_data else None
        self.baseline = Baseline.from_train(self.train_vectors)
        seed_all(cfg.seed)

        av = ActivationVerbalizer.from_pretrained(cfg.av, dtype=cfg.dtype)
        if av.d_model != self.train_vectors.shape[1]:
            raise NLAError(
                f"the AV has d_model {av.d_model} but the vectors have {self.train_vectors.shape[1]} dimensions"
            )
        self.ref, self.merge_on_save = _policy(av, cfg)
        av.model.eval()
        self.av = av
        self.ar = ActivationReconstructor.from_pretrained(cfg.ar, dtype=cfg.dtype, trainable=cfg.ar_lr > 0)
        self.ar.max_length = cfg.ar_max_length
        self.ar_adapter_only = bool(self.ar.has_lora and not (Path(cfg.ar) / "config.json").exists())
        self.frozen_ar = ActivationReconstructor.from_pretrained(cfg.ar, dtype=cfg.dtype).to(device)
        self.frozen_ar.max_length = cfg.ar_max_length
        if self.ref is not None:
            self.ref.to(device)
        av_wrapped, self.av_opt = self.accel.prepare(av.model, _adamw(av.model, cfg.av_lr))
        self.ar_opt: Any = None
        ar_wrapped: nn.Module = self.ar
        if cfg.ar_lr > 0:
            ar_wrapped, self.ar_opt = self.accel.prepare(self.ar, _adamw(self.ar, cfg.ar_lr))
        else:
            self.ar.to(device)
        self.policy = PolicyUpdate(av, av_wrapped, self.ref, self.av_opt, cfg, self.accel, self.bf16)
        self.recon = ReconstructorUpdate(self.ar, ar_wrapped, self.ar_opt, cfg, self.accel, self.bf16)
        self.step = 0
        self.elapsed = 0.0
        self.out_dir = Path(cfg.out_dir)
        self.checkpoint = Checkpoint(
            self.out_dir / CHECKPOINT,
            {"av.safetensors": av.model, "ar.safetensors": self.ar},
            {"av_opt": self.av_opt, "ar_opt": self.ar_opt},
            keep=cfg.keep_last,
        )

    # ------------------------------------------------------------------------------ phases
    def amp(self) -> Any:
        """The autocast context of a forward (bf16 when the option says so)."""
        return bf16_autocast(self.accel.device, self.bf16)

    def step_vectors(self, step: int) -> torch.Tensor:  # -> (P / world, d)
        """This rank's slice of the activations of ``step`` (0-based)."""
        rows = step_rows(self.train_vectors.shape[0], self.cfg.prompts_per_step, step, self.cfg.seed)
        share = self.cfg.prompts_per_step // self.world
        return self.train_vectors[rows[self.rank * share : (self.rank + 1) * share]]

    def rollout(self, vectors: torch.Tensor, step: int) -> Rollouts:  # vectors (N, d)
        """Sample ``group_size`` responses per vector (seeded by step and rank)."""
        return sample_rollouts(self.av, vectors, self.cfg, sampling_seed(self.cfg.seed, step, self.rank), self.amp())

    def score(self, ro: Rollouts) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Rewards (M,), the current AR's mse_nrm per row (M,) and each weighted reward term (M,)."""
        pred = reconstruct(self.ar, ro, self.amp())
        rewards, parts = total_reward(self.terms, RewardInputs.of(ro, pred, self.cfg.group_size))
        return rewards, mse_nrm(pred, ro.vectors.float()), parts

    def _logprobs(
        self, model: nn.Module, raw: nn.Module, vectors: torch.Tensor, ids: list[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:  # -> (b, R), (b, R)
        return self.policy.logprobs(model, raw, vectors, ids)

    def update_av(self, ro: Rollouts, advantages: torch.Tensor) -> dict[str, float]:  # advantages (M,)
        return self.policy.update(ro, advantages, self.step)

    def update_ar(self, ro: Rollouts) -> dict[str, float]:
        return self.recon.update(ro, self.step)

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.world == 1 else self.accel.gather(x.to(self.accel.device)).cpu()

    def _mean(self, x: float) -> float:  # mean over ranks
        return reduce_sum(self.accel, x) / self.world

    def train_step(self) -> RLStep:
        """One full RL step (rollout, score, AV update, AR update) at ``self.step``; advances it."""
        cfg = self.cfg
        t0 = time.perf_counter()
        ro = self.rollout(self.step_vectors(self.step), self.step)
        t1 = time.perf_counter()
        rewards, mse, parts = self.score(ro)
        adv = rl_math.grpo_advantages(rewards, cfg.group_size, normalize_std=cfg.normalize_std).flatten()
        t2 = time.perf_counter()
        av_stats = self.update_av(ro, adv)
        t3 = time.perf_counter()
        ar_stats = self.update_ar(ro)
        t4 = time.perf_counter()
        self.step += 1
        g_reward, g_valid, g_mse = self._gather(rewards), self._gather(ro.valid.float()), self._gather(mse)
        stats = response_stats(ro.responses)
        stats = {k: self._mean(v) for k, v in stats.items()} if self.world > 1 else stats
        lengths = self._gather(ro.lengths.float())
        ok = g_valid.bool()
        return RLStep(
            step=self.step, reward_mean=float(g_reward.mean()), reward_std=float(g_reward.std(unbiased=False)),
            fve=fve_nrm(g_mse[ok], self.baseline.value) if ok.any() else float("nan"),
            valid_rate=float(g_valid.mean()), tag_failure_rate=stats["tag_failure_rate"],
            truncation_rate=stats["truncation_rate"], cjk_rate=stats["cjk_rate"], len_mean=float(lengths.mean()),
            len_p50=float(lengths.quantile(0.5)), len_p90=float(lengths.quantile(0.9)), len_max=float(lengths.max()),
            time_generate_s=t1 - t0, time_score_s=t2 - t1, time_av_s=t3 - t2, time_ar_s=t4 - t3,
            time_step_s=t4 - t0, **av_stats, **ar_stats,
            rewards={name: float(self._gather(v).mean()) for name, v in parts.items()},
        )  # fmt: skip

    def evaluate(self) -> dict[str, float]:
        """Greedy explanations of held-out activations scored by the current and the frozen SFT AR."""
        if self.eval_set is None:
            return {}
        cfg, vecs = self.cfg, self.eval_set.vectors[: self.cfg.eval_rows]
        with self.amp():
            cur, resp = round_trip(
                self.av, self.ar, vecs, self.baseline, max_new_tokens=cfg.max_new_tokens,
                batch_size=cfg.gen_batch_size, seed=cfg.seed,
            )  # fmt: skip
            frozen, _ = round_trip(self.av, self.frozen_ar, vecs, self.baseline, responses=resp, seed=cfg.seed)
        out = dict(cur)
        out.update(
            {f"frozen_ar/{k}": v for k, v in frozen.items() if k.startswith(("fve", "mse", "cosine", "retrieval"))}
        )
        return out

    # ------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        self.checkpoint.save(self.accel, step=self.step, elapsed=self.elapsed)

    def load_checkpoint(self) -> bool:
        state = self.checkpoint.load()
        if state is None:
            return False
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        return True

    def save_final(self) -> None:
        if self.accel.is_main_process:
            self.av.save_pretrained(self.out_dir / "final" / "av", merge_lora=self.merge_on_save)
            self.ar.save_pretrained(self.out_dir / "final" / "ar", adapter_only=self.ar_adapter_only)
        self.accel.wait_for_everyone()

    # ------------------------------------------------------------------------------ the loop
    def run(self, on_step: Callable[[RLStep], None] | None = None) -> RLResult:
        from tqdm.auto import tqdm

        cfg, main = self.cfg, self.accel.is_main_process
        resumed = self.step if self.load_checkpoint() else None
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out_dir / "config.json", json.dumps(config_to_dict(cfg), indent=2) + "\n")
        tracker = Tracker(self.out_dir, cfg.log_with, enabled=main, config=asdict(cfg), step_key=STEP_KEY)
        tracker.drop_after(self.step)
        if resumed is not None:
            log.info("resuming %s from step %d", self.out_dir, resumed)
        t_start = time.perf_counter() - self.elapsed
        last: RLStep | None = None
        bar = tqdm(total=cfg.steps, initial=self.step, desc="rl", disable=not main, dynamic_ncols=True)
        try:
            while self.step < cfg.steps:
                last = self.train_step()
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps and main:
                    last.eval = self.evaluate()
                self.elapsed = time.perf_counter() - t_start
                tracker.log({**last.record(), "elapsed": self.elapsed})
                log.debug("step %d: %s", self.step, last.record())
                bar.update(1)
                bar.set_postfix(reward=f"{last.reward_mean:.3f}", fve=f"{last.fve:.3f}", valid=f"{last.valid_rate:.2f}")
                if on_step is not None:
                    on_step(last)
                if (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.steps:
                    self.save_checkpoint()
            bar.close()
            final = self.evaluate() if main else {}
            if final:
                log.info(
                    "final held-out: fve_nrm %.4f (frozen SFT AR %.4f, shuffled %.4f), tag failures %.2f",
                    final["fve_nrm"], final["frozen_ar/fve_nrm"], final["fve_shuffled"], final["tag_failure_rate"],
                )  # fmt: skip
                tracker.log({"step": self.step, "final": True, **{f"eval/{k}": v for k, v in final.items()}})
            self.save_final()
        finally:
            bar.close()
            tracker.close()
        return RLResult(self.step, self.out_dir, final, last, resumed, time.perf_counter() - t_start)


def train_rl(
    cfg: RLConfig,
    *,
    reward_fn: RewardFn | None = None,
    terms: list[RewardTerm] | None = None,
    on_step: Callable[[RLStep], None] | None = None,
) -> RLResult:
    """Run (or resume) joint RL; the final AV and AR land in ``<out_dir>/final/{av,ar}``.

    ``reward_fn(rollouts) -> (M,)`` replaces the reward; ``terms`` replaces the option-built reward terms."""
    return RLTrainer(cfg, reward_fn=reward_fn, terms=terms).run(on_step)


__all__ = [
    "METRICS",
    "RLConfig",
    "RLResult",
    "RLStep",
    "RLTrainer",
    "RewardTerm",
    "Rollouts",
    "iter_metrics",
    "train_rl",
]
