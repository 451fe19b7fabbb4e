"""Joint RL (``nla train rl``): GRPO on the AV with rewards from the CURRENT AR, which keeps training.

One step, for ``prompts_per_step`` activations (each rank takes its own slice):

1. **rollout**: ``group_size`` explanations per vector, sampled from the AV with the vector injected
   (temperature, no top-k/top-p), cut at ``max_new_tokens``; a response without end-of-turn within the cap
   is *truncated*, one without a complete ``<explanation>`` pair or truncated is *invalid*;
2. **score**: reward ``-mse_nrm(AR(explanation), v)`` from the current AR, ``-2`` when invalid
   (:func:`nla.core.rl_math.nla_reward`), plus the optional contrastive and hinged length terms;
   advantages per group (:func:`nla.core.rl_math.grpo_advantages`);
3. **AV update**: old log-probs from the RAW logits of the policy with the vector injected, reference
   log-probs from the frozen SFT AV (a frozen copy; with LoRA the same model with its adapter disabled);
   loss = clipped surrogate + ``kl_coef`` * k3 KL; AdamW with clipping, non-finite steps skipped;
4. **AR update**: one supervised MSE step on the VALID rollouts (explanation -> true vector), own optimizer.

Everything runs with dropout off, so the first PPO epoch's ratio is exactly 1. Sampling is seeded per
(step, rank), and checkpoints hold the trainable weights, both optimizers and the step: a resumed run equals
an uninterrupted one. Multi-GPU: ``accelerate launch -m nla.cli train rl ...`` (DDP; gradients are
all-reduced and the loss is normalised by the GLOBAL token count, so any number of ranks gives the
same update as one process).

>>> res = train_rl(RLConfig(av="runs/av/final", ar="runs/ar/final", data="runs/acts", steps=50))  # doctest: +SKIP
>>> res.final_eval["fve_nrm"], res.final_eval["frozen_ar/fve_nrm"]                              # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nla.common.config import config_to_dict, option
from nla.common.errors import NLAError
from nla.common.paths import atomic_dir, atomic_write_text
from nla.core import rl_math
from nla.core.inject import Injector
from nla.core.metrics import fve_nrm, mse_nrm
from nla.data.activations import load_vectors
from nla.evaluate.roundtrip import Baseline, response_stats, round_trip
from nla.models.ar import ActivationReconstructor
from nla.models.av import ActivationVerbalizer, Responses
from nla.models.lora import apply_lora, is_lora
from nla.train.loop import load_trainable_state, trainable_state

log = logging.getLogger(__name__)

CHECKPOINT, METRICS = "checkpoint", "metrics.jsonl"


@dataclass
class RLConfig:
    """Options of ``nla train rl`` (joint GRPO of the AV against a co-trained AR)."""

    av: str = option("", "SFT AV checkpoint directory (e.g. runs/av/final); also the frozen KL reference.")
    ar: str = option("", "SFT AR checkpoint directory (e.g. runs/ar/final); trained further on the rollouts.")
    data: str = option("", "Training activations: an `nla extract` directory (split --split) or parquet file/dir.")
    split: str = option("rl", "Split of --data to use when it is an `nla extract` directory.")
    eval_data: str = option("", "Held-out activations (extract directory or parquet); empty = no evaluation.")
    eval_split: str = option("eval", "Split of --eval-data when it is an `nla extract` directory.")
    out_dir: str = option("runs/rl", "Run directory: metrics.jsonl, checkpoint/ (resume), final/av and final/ar.")
    steps: int = option(100, "RL steps.")
    prompts_per_step: int = option(8, "Activations per step (all ranks together; divisible by the rank count).")
    group_size: int = option(4, "Explanations sampled per activation (G).")
    temperature: float = option(1.0, "Sampling temperature (log-probs use the same temperature).")
    max_new_tokens: int = option(150, "Response cap; a response without end-of-turn within it gets reward -2.")
    av_lr: float = option(1e-5, "AdamW learning rate of the AV (constant).")
    ar_lr: float = option(5e-5, "AdamW learning rate of the AR (constant); 0 = frozen AR.")
    kl_coef: float = option(0.01, "Weight of the k3 KL to the frozen SFT AV.")
    clip_eps: float = option(0.2, "PPO ratio clip.")
    ppo_epochs: int = option(1, "AV optimizer steps on each batch of rollouts.")
    aggregation: str = option(
        "token", "Loss aggregation: token (mean over all tokens) or sequence.", choices=["token", "sequence"]
    )
    normalize_std: bool = option(True, "Divide advantages by the group std (False: r - mean).")
    contrastive_weight: float = option(0.0, "Weight of the contrastive term (vs another activation); 0 = off.")
    length_target: int = option(0, "Hinged length penalty starts above this many tokens (0 = off).")
    length_coef: float = option(0.0, "Reward lost per token above length_target (0 = off).")
    max_grad_norm: float = option(1.0, "Gradient-norm clip of both models (0 = none).")
    train_batch_size: int = option(8, "Rollouts per forward/backward micro-batch (per rank).")
    gen_batch_size: int = option(32, "Sequences per generate call.")
    ar_max_length: int = option(256, "Max tokens of a templated explanation fed to the AR.")
    eval_every: int = option(25, "Held-out evaluation every this many steps (0 = only at the end).")
    eval_rows: int = option(64, "Held-out activations scored at each evaluation.")
    save_every: int = option(25, "Resumable checkpoint every this many steps (and at the end).")
    seed: int = option(0, "Seed of the data order and of the sampling.")
    lora: bool = option(False, "Train LoRA adapters on the AV (ref = adapter disabled). Ignored if the SFT AV is LoRA.")
    lora_r: int = option(16, "LoRA rank.")
    lora_alpha: float = option(32.0, "LoRA alpha.")
    merge_lora: bool = option(False, "Save the final AV with LoRA merged into full weights.")
    dtype: str = option("float32", "Weights dtype.", choices=["float32", "bfloat16", "float16"])
    bf16: str = option("auto", "bf16 autocast: auto = on CUDA when supported.", choices=["auto", "true", "false"])

    def __post_init__(self) -> None:
        for name in (
            "steps",
            "prompts_per_step",
            "group_size",
            "max_new_tokens",
            "ppo_epochs",
            "train_batch_size",
            "gen_batch_size",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")


@dataclass
class Rollouts:
    """The sampled responses of one step on this rank: row ``i * G + j`` is sample j of vector i."""

    vectors: torch.Tensor  # (M, d) raw activation of each row
    responses: Responses
    valid: torch.Tensor  # (M,) bool

    @property
    def lengths(self) -> torch.Tensor:  # (M,)
        return torch.tensor([len(r) for r in self.responses.ids], dtype=torch.long)


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

    def record(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "eval"}
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


def _rng_state() -> dict[str, Any]:
    # sampling is seeded per (step, rank); the torch stream is saved for anything else that draws from it
    return {"torch": torch.get_rng_state()}


class RLTrainer:
    """Holds the models, optimizers and state of a run; :meth:`run` is the loop (see the module doc)."""

    def __init__(self, cfg: RLConfig, *, reward_fn: RewardFn | None = None) -> None:
        from accelerate import Accelerator

        if not cfg.av or not cfg.ar or not cfg.data:
            raise NLAError("nla train rl needs --av (SFT AV dir), --ar (SFT AR dir) and --data (activations)")
        self.cfg, self.reward_fn = cfg, reward_fn
        self.accel = Accelerator(cpu=not torch.cuda.is_available())
        self.world, self.rank = self.accel.num_processes, self.accel.process_index
        if cfg.prompts_per_step % self.world:
            raise NLAError(f"prompts_per_step {cfg.prompts_per_step} is not divisible by the {self.world} processes")
        device = self.accel.device
        self.use_bf16 = cfg.bf16 == "true" or (
            cfg.bf16 == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
        )
        self.train_vectors = load_vectors(cfg.data, cfg.split).vectors
        self.eval_set = load_vectors(cfg.eval_data, cfg.eval_split) if cfg.eval_data else None
        self.baseline = Baseline.from_train(self.train_vectors)
        torch.manual_seed(cfg.seed)

        av = ActivationVerbalizer.from_pretrained(cfg.av, dtype=cfg.dtype)
        if av.d_model != self.train_vectors.shape[1]:
            raise NLAError(
                f"the AV has d_model {av.d_model} but the vectors have {self.train_vectors.shape[1]} dimensions"
            )
        self.merge_on_save = cfg.merge_lora
        self.ref: nn.Module | None = None  # None: the LoRA model with its adapter disabled
        if is_lora(av.model):  # an SFT LoRA AV: keep training its adapter, reference = frozen copy
            self.ref = copy.deepcopy(av.model).requires_grad_(False)
            for name, p in av.model.named_parameters():
                p.requires_grad_("lora_" in name)
        elif cfg.lora:
            self.merge_on_save = True  # the adapter sits on the SFT weights, not on extraction.base_model
            av.model = apply_lora(av.model, r=cfg.lora_r, alpha=cfg.lora_alpha)
        else:
            self.ref = copy.deepcopy(av.model).requires_grad_(False)
            av.model.requires_grad_(True)
        av.model.eval()
        self.av = av
        self.ar = ActivationReconstructor.from_pretrained(cfg.ar, dtype=cfg.dtype, trainable=cfg.ar_lr > 0)
        self.ar.max_length = cfg.ar_max_length
        self.ar_adapter_only = bool(self.ar.has_lora and not (Path(cfg.ar) / "config.json").exists())
        self.frozen_ar = ActivationReconstructor.from_pretrained(cfg.ar, dtype=cfg.dtype).to(device)
        self.frozen_ar.max_length = cfg.ar_max_length
        if self.ref is not None:
            self.ref.to(device)
        self.av_opt = torch.optim.AdamW(
            [p for p in av.model.parameters() if p.requires_grad], lr=cfg.av_lr, weight_decay=0.0
        )
        self.av_wrapped, self.av_opt = self.accel.prepare(av.model, self.av_opt)
        self.ar_opt: Any = None
        self.ar_wrapped: nn.Module = self.ar
        if cfg.ar_lr > 0:
            self.ar_opt = torch.optim.AdamW(
                [p for p in self.ar.parameters() if p.requires_grad], lr=cfg.ar_lr, weight_decay=0.0
            )
            self.ar_wrapped, self.ar_opt = self.accel.prepare(self.ar, self.ar_opt)
        else:
            self.ar.to(device)
        self.step = 0
        self.elapsed = 0.0
        self.out_dir = Path(cfg.out_dir)

    # ------------------------------------------------------------------------------ pieces
    def _autocast(self) -> Any:
        return torch.autocast(self.accel.device.type, dtype=torch.bfloat16, enabled=self.use_bf16)

    def _sum(self, x: float) -> float:
        if self.world == 1:
            return float(x)
        return float(self.accel.reduce(torch.tensor(float(x), device=self.accel.device), reduction="sum"))

    def step_vectors(self, step: int) -> torch.Tensor:  # -> (P / world, d)
        """This rank's slice of the activations of ``step`` (0-based): a seeded permutation per epoch."""
        n, p = self.train_vectors.shape[0], self.cfg.prompts_per_step
        idx = []
        for k in range(step * p, (step + 1) * p):
            epoch, i = divmod(k, n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed * 100003 + epoch))
            idx.append(int(perm[i]))
        share = p // self.world
        return self.train_vectors[idx[self.rank * share : (self.rank + 1) * share]]

    def rollout(self, vectors: torch.Tensor, step: int) -> Rollouts:  # vectors (N, d)
        """Sample ``group_size`` responses per vector (seeded by step and rank)."""
        cfg = self.cfg
        seed = cfg.seed * 1_000_003 + step * 1_009 + self.rank
        with self._autocast():
            resp = self.av.sample(
                vectors,
                num_samples=cfg.group_size,
                max_new_tokens=cfg.max_new_tokens,
                do_sample=True,
                temperature=cfg.temperature,
                batch_size=cfg.gen_batch_size,
                seed=seed,
            )
        valid = rl_math.response_valid(resp.texts, resp.truncated)
        return Rollouts(vectors.repeat_interleave(cfg.group_size, dim=0).cpu(), resp, valid)

    def score(self, ro: Rollouts) -> tuple[torch.Tensor, torch.Tensor]:  # -> rewards (M,), mse (M,)
        """Rewards from the CURRENT AR (or the injected reward function) and the AR's mse per row."""
        cfg, valid = self.cfg, ro.valid
        gold = ro.vectors.float()  # (M, d)
        pred = torch.zeros_like(gold)
        rows = valid.nonzero().squeeze(-1).tolist()
        if rows:
            with self._autocast():
                pred[valid] = self.ar.predict([ro.responses.explanations[i] or "" for i in rows]).float()
        mse = mse_nrm(pred, gold)
        if self.reward_fn is not None:
            return self.reward_fn(ro).float().cpu(), mse
        reward = rl_math.nla_reward(pred, gold, valid)
        groups = gold.shape[0] // cfg.group_size
        if cfg.contrastive_weight and groups > 1:
            negatives = gold.roll(cfg.group_size, dims=0)  # the vector of another activation
            bonus = rl_math.contrastive_reward(pred, gold, negatives, cfg.contrastive_weight)
            reward = reward + torch.where(valid, bonus, torch.zeros_like(bonus))
        if cfg.length_coef > 0 and cfg.length_target > 0:
            reward = reward + rl_math.length_penalty(ro.lengths, target=cfg.length_target, coef=cfg.length_coef)
        return reward, mse

    def _apply(self, opt: Any, params: list[nn.Parameter], what: str) -> tuple[float, int]:
        """Clip, then step unless some rank saw a non-finite gradient; returns (grad norm, skipped)."""
        norm = float(self.accel.clip_grad_norm_(params, self.cfg.max_grad_norm or float("inf")))
        bad = self._sum(float(not math.isfinite(norm))) > 0
        if bad:
            log.warning("step %d: non-finite %s gradient (norm %s): update skipped", self.step + 1, what, norm)
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        return norm, int(bad)

    def _logprobs(
        self,
        model: nn.Module,
        raw: nn.Module,
        vectors: torch.Tensor,  # (b, d)
        ids: list[list[int]],
    ) -> tuple[torch.Tensor, torch.Tensor]:  # -> (b, R), (b, R)
        """Per-token log-probs (raw logits / temperature) of the responses with the vector injected."""
        av = self.av
        batch = av.encode_tokens(vectors, ids, device=self.accel.device)
        p, r = batch.prompt_len, batch.input_ids.shape[1] - batch.prompt_len
        with (
            Injector(
                raw,
                av.marker.token_id,
                batch.vectors,
                av.injection_scale,
                mode=av.injection_mode,
                add_layer=av.add_layer,
            ) as inj,
            self._autocast(),
        ):
            out = model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False, logits_to_keep=r + 1
            )
        if inj.calls != 1:
            raise RuntimeError(f"injection ran {inj.calls} times in one forward")
        logits = out.logits[:, -(r + 1) : -1]  # (b, R, V): predicts response tokens 0..R-1
        mask = batch.response_mask[:, p:]
        logp = rl_math.token_logprobs(logits, batch.input_ids[:, p:], self.cfg.temperature)
        return torch.where(mask, logp, torch.zeros_like(logp)), mask

    def _ref_logprobs(self, vectors: torch.Tensor, ids: list[list[int]]) -> torch.Tensor:  # -> (b, R)
        if self.ref is not None:
            return self._logprobs(self.ref, self.ref, vectors, ids)[0]
        raw = self.av.model
        with raw.disable_adapter():
            return self._logprobs(raw, raw, vectors, ids)[0]

    def update_av(self, ro: Rollouts, advantages: torch.Tensor) -> dict[str, float]:  # advantages (M,)
        """``ppo_epochs`` clipped-PG + KL optimizer steps of the AV on the rollouts."""
        cfg, accel = self.cfg, self.accel
        raw = self.av.model
        m, mb = len(ro.responses.ids), cfg.train_batch_size
        chunks = [list(range(i, min(i + mb, m))) for i in range(0, m, mb)]
        # With one PPO epoch the old log-probs equal the first pass's (same chunks, dropout off): reuse them
        # detached instead of paying a separate forward. The reference is skipped when kl_coef is 0.
        reuse_old = cfg.ppo_epochs == 1
        old: list[torch.Tensor | None] = [None] * len(chunks)
        ref: list[torch.Tensor | None] = [None] * len(chunks)
        with torch.no_grad():
            for k, c in enumerate(chunks):
                vec, ids = ro.vectors[c], [ro.responses.ids[i] for i in c]
                if not reuse_old:
                    old[k] = self._logprobs(raw, raw, vec, ids)[0].float()
                if cfg.kl_coef > 0:
                    ref[k] = self._ref_logprobs(vec, ids).float()
        n_tokens = int(ro.lengths.sum())  # every response token is a loss token
        count = n_tokens if cfg.aggregation == "token" else m
        denom = self._sum(count) / self.world  # DDP averages gradients over ranks: global mean in the end
        adv = advantages.float().to(accel.device)
        stats = {"kl": 0.0, "clip_frac": 0.0, "ratio_mean": 0.0, "pg_loss": 0.0, "av_grad_norm": 0.0, "av_skipped": 0}
        params = [p for p in raw.parameters() if p.requires_grad]
        for epoch in range(cfg.ppo_epochs):
            kl_sum = pg_sum = clip_sum = ratio_sum = 0.0
            for k, c in enumerate(chunks):
                sync = contextlib.nullcontext() if k == len(chunks) - 1 else accel.no_sync(self.av_wrapped)
                with sync:
                    vec, ids = ro.vectors[c], [ro.responses.ids[i] for i in c]
                    logp, mask = self._logprobs(self.av_wrapped, raw, vec, ids)
                    if old[k] is None:
                        old[k] = logp.detach().float()
                    pg, st = rl_math.clipped_pg_loss(
                        logp,
                        old[k],
                        adv[c],
                        mask,
                        cfg.clip_eps,  # type: ignore[arg-type]
                        aggregation=cfg.aggregation,
                        denom=denom,
                    )  # type: ignore[arg-type]
                    ref_k = ref[k] if ref[k] is not None else logp.detach()
                    kl = rl_math.masked_mean(
                        rl_math.k3_kl_tokens(logp, ref_k),
                        mask,
                        cfg.aggregation,  # type: ignore[arg-type]
                        denom=denom,
                    )
                    accel.backward(pg + cfg.kl_coef * kl)
                n_tok = float(mask.sum())
                kl_sum, pg_sum = kl_sum + float(kl.detach()), pg_sum + float(pg.detach())
                clip_sum, ratio_sum = clip_sum + st["clip_frac"] * n_tok, ratio_sum + st["ratio_mean"] * n_tok
            grad_norm, bad = self._apply(self.av_opt, params, "AV")
            stats["av_skipped"] += bad
            if epoch == 0:
                tokens = self._sum(n_tokens)
                stats.update(
                    kl=self._sum(kl_sum) / self.world,
                    pg_loss=self._sum(pg_sum) / self.world,
                    clip_frac=self._sum(clip_sum) / tokens,
                    ratio_mean=self._sum(ratio_sum) / tokens,
                    av_grad_norm=grad_norm,
                )
        return stats

    def update_ar(self, ro: Rollouts) -> dict[str, float]:
        """One supervised MSE step of the AR on the valid rollouts (explanation -> true vector)."""
        cfg, accel = self.cfg, self.accel
        rows = ro.valid.nonzero().squeeze(-1).tolist()
        total = self._sum(len(rows))
        if self.ar_opt is None or total == 0:
            return {"ar_loss": float("nan"), "ar_grad_norm": 0.0, "ar_skipped": int(self.ar_opt is not None)}
        denom = total / self.world
        weight = 1.0 if rows else 0.0  # a rank without valid rows joins the all-reduce with a zero loss
        rows = rows or [0]
        chunks = [rows[i : i + cfg.train_batch_size] for i in range(0, len(rows), cfg.train_batch_size)]
        loss_sum = 0.0
        self.ar.eval()
        for k, c in enumerate(chunks):
            sync = contextlib.nullcontext() if k == len(chunks) - 1 else accel.no_sync(self.ar_wrapped)
            with sync:
                enc = self.ar.tokenize([ro.responses.explanations[i] or "" for i in c])
                with self._autocast():
                    pred = self.ar_wrapped(enc["input_ids"], enc["attention_mask"])  # (b, d)
                loss = weight * mse_nrm(pred.float(), ro.vectors[c].to(pred.device)).sum() / denom
                accel.backward(loss)
            loss_sum += float(loss.detach())
        grad_norm, bad = self._apply(self.ar_opt, [p for p in self.ar.parameters() if p.requires_grad], "AR")
        return {"ar_loss": self._sum(loss_sum) / self.world, "ar_grad_norm": grad_norm, "ar_skipped": bad}

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.world == 1 else self.accel.gather(x.to(self.accel.device)).cpu()

    def train_step(self) -> RLStep:
        """One full RL step (rollout, score, AV update, AR update) at ``self.step``; advances it."""
        cfg = self.cfg
        t0 = time.perf_counter()
        ro = self.rollout(self.step_vectors(self.step), self.step)
        t1 = time.perf_counter()
        rewards, mse = self.score(ro)
        adv = rl_math.grpo_advantages(rewards, cfg.group_size, normalize_std=cfg.normalize_std).flatten()
        t2 = time.perf_counter()
        av_stats = self.update_av(ro, adv)
        t3 = time.perf_counter()
        ar_stats = self.update_ar(ro)
        t4 = time.perf_counter()
        self.step += 1
        g_reward = self._gather(rewards)
        g_valid = self._gather(ro.valid.float())
        g_mse = self._gather(mse)
        stats = response_stats(ro.responses)
        stats = {k: self._sum(v) / self.world for k, v in stats.items()} if self.world > 1 else stats
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
        )  # fmt: skip

    def evaluate(self) -> dict[str, float]:
        """Greedy explanations of held-out activations scored by the current and the frozen SFT AR."""
        if self.eval_set is None:
            return {}
        vecs = self.eval_set.vectors[: self.cfg.eval_rows]
        with self._autocast():
            cur, resp = round_trip(
                self.av,
                self.ar,
                vecs,
                self.baseline,
                max_new_tokens=self.cfg.max_new_tokens,
                batch_size=self.cfg.gen_batch_size,
                seed=self.cfg.seed,
            )
            frozen, _ = round_trip(self.av, self.frozen_ar, vecs, self.baseline, responses=resp, seed=self.cfg.seed)
        out = dict(cur)
        out.update(
            {f"frozen_ar/{k}": v for k, v in frozen.items() if k.startswith(("fve", "mse", "cosine", "retrieval"))}
        )
        return out

    # ------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        from safetensors.torch import save_file

        self.accel.wait_for_everyone()
        if self.accel.is_main_process:
            state = {
                "step": self.step,
                "elapsed": self.elapsed,
                "rng": _rng_state(),
                "av_opt": self.av_opt.state_dict(),
                "ar_opt": None if self.ar_opt is None else self.ar_opt.state_dict(),
            }
            with atomic_dir(self.out_dir / CHECKPOINT) as tmp:
                save_file(trainable_state(self.av.model), str(tmp / "av.safetensors"))
                save_file(trainable_state(self.ar), str(tmp / "ar.safetensors"))
                torch.save(state, tmp / "state.pt")
        self.accel.wait_for_everyone()

    def load_checkpoint(self) -> bool:
        from safetensors.torch import load_file

        ckpt = self.out_dir / CHECKPOINT
        if not (ckpt / "state.pt").exists():
            return False
        state = torch.load(ckpt / "state.pt", weights_only=True, map_location="cpu")
        load_trainable_state(self.av.model, load_file(str(ckpt / "av.safetensors")), f"{ckpt} (AV)")
        load_trainable_state(self.ar, load_file(str(ckpt / "ar.safetensors")), f"{ckpt} (AR)")
        self.av_opt.load_state_dict(state["av_opt"])
        if self.ar_opt is not None and state["ar_opt"] is not None:
            self.ar_opt.load_state_dict(state["ar_opt"])
        torch.set_rng_state(state["rng"]["torch"])
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
        metrics = self.out_dir / METRICS
        resumed = self.step if self.load_checkpoint() else None
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out_dir / "config.json", json.dumps(config_to_dict(cfg), indent=2) + "\n")
            _truncate_metrics(metrics, self.step)
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
                if main:
                    with metrics.open("a", encoding="utf-8") as f:
                        f.write(json.dumps({**last.record(), "elapsed": self.elapsed}) + "\n")
                log.debug("step %d: %s", self.step, last.record())
                bar.update(1)
                bar.set_postfix(reward=f"{last.reward_mean:.3f}", fve=f"{last.fve:.3f}", valid=f"{last.valid_rate:.2f}")
                if on_step is not None:
                    on_step(last)
                if (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.steps:
                    self.save_checkpoint()
        finally:
            bar.close()
        final = self.evaluate() if main else {}
        if main and final:
            log.info(
                "final held-out: fve_nrm %.4f (frozen SFT AR %.4f, shuffled %.4f), tag failures %.2f",
                final["fve_nrm"],
                final["frozen_ar/fve_nrm"],
                final["fve_shuffled"],
                final["tag_failure_rate"],
            )
            with metrics.open("a", encoding="utf-8") as f:
                f.write(
                    json.dumps({"step": self.step, "final": True, **{f"eval/{k}": v for k, v in final.items()}}) + "\n"
                )
        self.save_final()
        return RLResult(self.step, self.out_dir, final, last, resumed, time.perf_counter() - t_start)


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep only the records of steps the checkpoint holds (drop a later crash's and final records)."""
    if not path.exists():
        return
    keep = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and int(json.loads(line)["step"]) <= step and not json.loads(line).get("final")
    ]
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def train_rl(
    cfg: RLConfig, *, reward_fn: RewardFn | None = None, on_step: Callable[[RLStep], None] | None = None
) -> RLResult:
    """Run (or resume) joint RL; the final AV and AR land in ``<out_dir>/final/{av,ar}``."""
    return RLTrainer(cfg, reward_fn=reward_fn).run(on_step)


def iter_metrics(out_dir: str | Path) -> Iterator[dict[str, Any]]:
    """The records of ``<out_dir>/metrics.jsonl``."""
    path = Path(out_dir) / METRICS
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                yield json.loads(line)


__all__ = ["RLConfig", "RLResult", "RLStep", "RLTrainer", "Rollouts", "iter_metrics", "train_rl"]
