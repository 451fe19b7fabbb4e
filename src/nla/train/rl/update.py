"""Phases 3 and 4 of an RL step: the optimizer updates of the AV (policy) and of the AR (reconstructor).

:class:`PolicyUpdate`: ``ppo_epochs`` AdamW steps of the AV on the clipped surrogate
(:func:`nla.core.rl_math.clipped_pg_loss`) plus ``kl_coef`` times the k3 KL to the frozen SFT AV, both
aggregated alike (per token or per sequence). Log-probs come from the RAW logits at the sampling temperature,
with the vector injected exactly as when sampling. With dropout off the first epoch's ratio is exactly 1, so
with one epoch the old log-probs are the live ones, detached (no extra forward).

:class:`ReconstructorUpdate`: one supervised step of the AR on the valid rollouts (explanation -> true
vector, loss ``mse_nrm``), with its own optimizer.

Both split the rollouts into micro-batches of ``train_batch_size`` and divide by the GLOBAL count (tokens,
sequences or valid rows over all ranks) so that DDP's gradient average gives the same update on any number
of ranks; a step whose gradient norm is not finite on some rank is skipped everywhere.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from nla.core import rl_math
from nla.core.inject import Injector
from nla.core.metrics import mse_nrm
from nla.models.ar import ActivationReconstructor
from nla.models.av import ActivationVerbalizer
from nla.train.loop import bf16_autocast, clip_and_step, grad_sync, reduce_sum
from nla.train.rl.config import RLConfig
from nla.train.rl.rollout import Rollouts

log = logging.getLogger(__name__)


def _chunks(rows: list[int], size: int) -> list[list[int]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _step(accel: Any, opt: Any, params: list[nn.Parameter], cfg: RLConfig, what: str, step: int) -> tuple[float, int]:
    """Clip, then step unless some rank saw a non-finite gradient; returns (grad norm, skipped)."""
    norm, bad = clip_and_step(accel, opt, params, cfg.max_grad_norm)
    if bad:
        log.warning("step %d: non-finite %s gradient (norm %s): update skipped", step + 1, what, norm)
    return norm, int(bad)


class PolicyUpdate:
    """The AV side: per-token log-probs of responses with the vector injected, and the clipped-PG + KL steps.

    ``wrapped`` is ``av.model`` as prepared by accelerate (DDP); ``ref`` the frozen SFT AV, or None for a LoRA
    policy whose reference is the same model with its adapter disabled."""

    def __init__(
        self,
        av: ActivationVerbalizer,
        wrapped: nn.Module,
        ref: nn.Module | None,
        optimizer: Any,
        cfg: RLConfig,
        accel: Any,
        bf16: bool,
    ) -> None:
        self.av, self.wrapped, self.ref, self.optimizer = av, wrapped, ref, optimizer
        self.cfg, self.accel, self.bf16 = cfg, accel, bf16

    def logprobs(
        self,
        model: nn.Module,
        raw: nn.Module,
        vectors: torch.Tensor,  # (b, d)
        ids: list[list[int]],
    ) -> tuple[torch.Tensor, torch.Tensor]:  # -> (b, R), (b, R)
        """Per-token log-probs (raw logits / temperature) of the responses ``ids`` with the vector injected;
        ``model`` runs the forward, ``raw`` (the unwrapped module) holds the injection hook."""
        av = self.av
        batch = av.encode_tokens(vectors, ids, device=self.accel.device)
        p, r = batch.prompt_len, batch.input_ids.shape[1] - batch.prompt_len
        inject = Injector(
            raw, av.marker.token_id, batch.vectors, av.injection_scale, mode=av.injection_mode, add_layer=av.add_layer
        )
        with inject as inj, bf16_autocast(self.accel.device, self.bf16):
            out = model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False, logits_to_keep=r + 1
            )
        if inj.calls != 1:
            raise RuntimeError(f"injection ran {inj.calls} times in one forward")
        logits = out.logits[:, -(r + 1) : -1]  # (b, R, V): predicts response tokens 0..R-1
        mask = batch.response_mask[:, p:]
        logp = rl_math.token_logprobs(logits, batch.input_ids[:, p:], self.cfg.temperature)
        return torch.where(mask, logp, torch.zeros_like(logp)), mask

    def ref_logprobs(self, vectors: torch.Tensor, ids: list[list[int]]) -> torch.Tensor:  # -> (b, R)
        if self.ref is not None:
            return self.logprobs(self.ref, self.ref, vectors, ids)[0]
        raw = self.av.model
        with raw.disable_adapter():
            return self.logprobs(raw, raw, vectors, ids)[0]

    def update(self, ro: Rollouts, advantages: torch.Tensor, step: int) -> dict[str, float]:  # advantages (M,)
        """``ppo_epochs`` clipped-PG + KL optimizer steps of the AV on the rollouts; statistics of the first."""
        cfg, accel, world = self.cfg, self.accel, self.accel.num_processes
        raw = self.av.model
        m = len(ro.responses.ids)
        chunks = _chunks(list(range(m)), cfg.train_batch_size)
        # With one PPO epoch the old log-probs equal the first pass's (same chunks, dropout off): reuse them
        # detached instead of paying a separate forward. The reference is skipped when kl_coef is 0.
        reuse_old = cfg.ppo_epochs == 1
        old: list[torch.Tensor | None] = [None] * len(chunks)
        ref: list[torch.Tensor | None] = [None] * len(chunks)
        with torch.no_grad():
            for k, c in enumerate(chunks):
                vec, ids = ro.vectors[c], [ro.responses.ids[i] for i in c]
                if not reuse_old:
                    old[k] = self.logprobs(raw, raw, vec, ids)[0].float()
                if cfg.kl_coef > 0:
                    ref[k] = self.ref_logprobs(vec, ids).float()
        n_tokens = int(ro.lengths.sum())  # every response token is a loss token
        count = n_tokens if cfg.aggregation == "token" else m
        denom = reduce_sum(accel, count) / world  # DDP averages gradients over ranks: global mean in the end
        adv = advantages.float().to(accel.device)
        stats = {"kl": 0.0, "clip_frac": 0.0, "ratio_mean": 0.0, "pg_loss": 0.0, "av_grad_norm": 0.0, "av_skipped": 0}
        params = [p for p in raw.parameters() if p.requires_grad]
        agg: Any = cfg.aggregation
        for epoch in range(cfg.ppo_epochs):
            kl_sum = pg_sum = clip_sum = ratio_sum = 0.0
            for k, c in enumerate(chunks):
                with grad_sync(accel, self.wrapped, k == len(chunks) - 1):
                    vec, ids = ro.vectors[c], [ro.responses.ids[i] for i in c]
                    logp, mask = self.logprobs(self.wrapped, raw, vec, ids)
                    if old[k] is None:
                        old[k] = logp.detach().float()
                    old_k: Any = old[k]
                    pg, st = rl_math.clipped_pg_loss(
                        logp, old_k, adv[c], mask, cfg.clip_eps, aggregation=agg, denom=denom
                    )
                    ref_k = ref[k] if ref[k] is not None else logp.detach()
                    kl = rl_math.masked_mean(rl_math.k3_kl_tokens(logp, ref_k), mask, agg, denom=denom)
                    accel.backward(pg + cfg.kl_coef * kl)
                n_tok = float(mask.sum())
                kl_sum, pg_sum = kl_sum + float(kl.detach()), pg_sum + float(pg.detach())
                clip_sum, ratio_sum = clip_sum + st["clip_frac"] * n_tok, ratio_sum + st["ratio_mean"] * n_tok
            grad_norm, bad = _step(accel, self.optimizer, params, cfg, "AV", step)
            stats["av_skipped"] += bad
            if epoch == 0:
                tokens = reduce_sum(accel, n_tokens)
                stats.update(
                    kl=reduce_sum(accel, kl_sum) / world,
                    pg_loss=reduce_sum(accel, pg_sum) / world,
                    clip_frac=reduce_sum(accel, clip_sum) / tokens,
                    ratio_mean=reduce_sum(accel, ratio_sum) / tokens,
                    av_grad_norm=grad_norm,
                )
        return stats


class ReconstructorUpdate:
    """The AR side: one supervised MSE step on the valid rollouts (``optimizer`` None: the AR stays frozen)."""

    def __init__(
        self, ar: ActivationReconstructor, wrapped: nn.Module, optimizer: Any, cfg: RLConfig, accel: Any, bf16: bool
    ) -> None:
        self.ar, self.wrapped, self.optimizer = ar, wrapped, optimizer
        self.cfg, self.accel, self.bf16 = cfg, accel, bf16

    def update(self, ro: Rollouts, step: int) -> dict[str, float]:
        """One step of ``mse_nrm(AR(explanation), true vector)`` summed over the valid rows of all ranks."""
        cfg, accel, world = self.cfg, self.accel, self.accel.num_processes
        rows = ro.valid.nonzero().squeeze(-1).tolist()
        total = reduce_sum(accel, len(rows))
        if self.optimizer is None or total == 0:
            return {"ar_loss": float("nan"), "ar_grad_norm": 0.0, "ar_skipped": int(self.optimizer is not None)}
        denom = total / world
        weight = 1.0 if rows else 0.0  # a rank without valid rows joins the all-reduce with a zero loss
        chunks = _chunks(rows or [0], cfg.train_batch_size)
        loss_sum = 0.0
        self.ar.eval()
        for k, c in enumerate(chunks):
            with grad_sync(accel, self.wrapped, k == len(chunks) - 1):
                enc = self.ar.tokenize([ro.responses.explanations[i] or "" for i in c])
                with bf16_autocast(accel.device, self.bf16):
                    pred = self.wrapped(enc["input_ids"], enc["attention_mask"])  # (b, d)
                loss = weight * mse_nrm(pred.float(), ro.vectors[c].to(pred.device)).sum() / denom
                accel.backward(loss)
            loss_sum += float(loss.detach())
        params = [p for p in self.ar.parameters() if p.requires_grad]
        grad_norm, bad = _step(accel, self.optimizer, params, cfg, "AR", step)
        return {"ar_loss": reduce_sum(accel, loss_sum) / world, "ar_grad_norm": grad_norm, "ar_skipped": bad}


__all__ = ["PolicyUpdate", "ReconstructorUpdate"]
