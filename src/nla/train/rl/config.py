"""The options of joint RL (``nla train rl``); every phase module reads its settings from :class:`RLConfig`."""

from __future__ import annotations

from dataclasses import dataclass

from nla.common.config import option
from nla.train.tracking import LOG_WITH


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
    keep_last: int = option(1, "Keep the last N saves as checkpoint-<step>/ snapshots (1 = only checkpoint/).")
    seed: int = option(0, "Seed of the data order and of the sampling.")
    lora: bool = option(False, "Train LoRA adapters on the AV (ref = adapter disabled). Ignored if the SFT AV is LoRA.")
    lora_r: int = option(16, "LoRA rank.")
    lora_alpha: float = option(32.0, "LoRA alpha.")
    merge_lora: bool = option(False, "Save the final AV with LoRA merged into full weights.")
    dtype: str = option("float32", "Weights dtype.", choices=["float32", "bfloat16", "float16"])
    bf16: str = option("auto", "bf16 autocast: auto = on CUDA when supported.", choices=["auto", "true", "false"])
    log_with: str = option(
        "none", "Experiment tracker besides metrics.jsonl (imported only when chosen).", choices=LOG_WITH
    )

    def __post_init__(self) -> None:
        for name in (
            "steps",
            "prompts_per_step",
            "group_size",
            "max_new_tokens",
            "ppo_epochs",
            "train_batch_size",
            "gen_batch_size",
            "keep_last",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")


__all__ = ["RLConfig"]
