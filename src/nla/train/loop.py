"""A generic supervised training loop shared by the AR and AV trainers.

:func:`fit` runs AdamW with linear warmup + cosine decay, gradient accumulation, clipping, skipping of
steps whose loss or gradients are not finite, optional bf16 autocast, periodic evaluation, JSONL
metrics, atomic checkpoints and **exact resume**: re-running with the same ``out_dir`` continues from
``out_dir/checkpoint`` and ends with the same weights as a run that was never interrupted. The machinery is
shared with joint RL: checkpoints and RNG streams in :mod:`nla.train.checkpoint`, metrics and the optional
TensorBoard/W&B sinks in :mod:`nla.train.tracking`, and the step pieces here (:func:`use_bf16`,
:func:`grad_sync`, :func:`clip_and_step`, :func:`reduce_sum`).

``batches(epoch)`` must yield the (micro-)batches of one epoch deterministically; on resume the first
``k`` batches of the interrupted epoch are drawn again and dropped. A step consumes ``grad_accum``
batches (per process). Batches may be tensors or dicts/lists/dataclasses of tensors; they are moved to
the training device before ``loss_fn(model, batch)`` is called.

>>> result = fit(model, lambda m, b: ((m(b["x"]) - b["y"]) ** 2).mean(),      # doctest: +SKIP
...              lambda epoch: my_batches(epoch), TrainConfig(out_dir="runs/demo", max_steps=100))

Multi-GPU: run under ``accelerate launch``; each process takes every ``world_size``-th batch, the
model is wrapped by ``Accelerator.prepare`` and evaluation metrics are averaged over processes. A plain
single CPU/GPU process needs no launcher.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections import UserDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nla.common.config import option
from nla.common.errors import NLAError
from nla.train.checkpoint import Checkpoint, load_trainable_state, rng_isolated, seed_all, trainable_state
from nla.train.tracking import LOG_WITH, Tracker

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
WEIGHTS = "trainable.safetensors"


@dataclass
class TrainConfig:
    """Options of the shared SFT loop (every stage's config extends this)."""

    out_dir: str = option("runs/train", "Run directory: metrics.jsonl, checkpoint/ (resume) and final/.")
    max_steps: int = option(1000, "Optimizer steps to train for (each step uses batch_size * grad_accum rows).")
    batch_size: int = option(16, "Rows per micro-batch (per process).")
    grad_accum: int = option(1, "Micro-batches accumulated into one optimizer step.")
    lr: float = option(2e-5, "Peak learning rate of AdamW.")
    weight_decay: float = option(0.0, "AdamW weight decay (applied to matrices only, not to norms/biases).")
    warmup_steps: int = option(10, "Steps of linear warmup from 0 to lr.")
    min_lr_ratio: float = option(0.1, "Cosine decay ends at lr * min_lr_ratio at max_steps.")
    max_grad_norm: float = option(1.0, "Clip the global gradient norm to this (0 = no clipping).")
    eval_every: int = option(100, "Evaluate every this many steps (0 = only at the end).")
    save_every: int = option(200, "Write a resumable checkpoint every this many steps (0 = only at the end).")
    keep_last: int = option(1, "Keep the last N saves as checkpoint-<step>/ snapshots (1 = only checkpoint/).")
    seed: int = option(0, "Random seed (data order, dropout, init of new weights).")
    bf16: str = option(
        "auto",
        "bf16 autocast: auto = on CUDA when supported, true = force, false = off.",
        choices=["auto", "true", "false"],
    )
    log_with: str = option("none", "Experiment tracker (imported only when chosen).", choices=LOG_WITH)

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "keep_last"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass
class TrainResult:
    steps: int  # optimizer steps done in total (including skipped ones and those before a resume)
    skipped_nonfinite: int  # steps whose loss or gradients were NaN/inf (optimizer not stepped)
    final_eval: dict[str, float]  # evaluate(model) after the last step ({} without evaluate)
    out_dir: Path
    final_loss: float = float("nan")  # mean loss of the last step
    resumed_from: int | None = None  # the checkpoint step this run continued from
    elapsed_s: float = 0.0  # wall time of all sessions of the run together
    extra: dict[str, Any] = field(default_factory=dict)  # stage-specific facts (e.g. skipped data rows)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, then cosine to lr*min_lr_ratio."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    cos = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cos)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor inside ``batch`` (nested dicts, lists, tuples, dataclasses) to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, UserDict) and hasattr(batch, "to"):
        return batch.to(device)  # transformers BatchEncoding
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and not hasattr(batch, "_fields"):
        return type(batch)(to_device(v, device) for v in batch)
    if isinstance(batch, tuple):  # NamedTuple
        return type(batch)(*(to_device(v, device) for v in batch))
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(
            batch,
            **{f.name: to_device(getattr(batch, f.name), device) for f in dataclasses.fields(batch) if f.init},
        )
    return batch


# ---------------------------------------------------------------------------------------- pieces
def use_bf16(mode: str, device: torch.device) -> bool:
    """The ``bf16`` option: ``"auto"`` = on CUDA when the GPU supports it, ``"true"``/``"false"`` = forced."""
    if mode == "true":
        return True
    if mode == "false":
        return False
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def bf16_autocast(device: torch.device, enabled: bool) -> Any:
    """The autocast context of a forward pass (a no-op when ``enabled`` is False)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def grad_sync(accel: Any, model: nn.Module, last: bool) -> Any:
    """Context of one micro-batch's backward: DDP all-reduces gradients only on the ``last`` one of a step."""
    return contextlib.nullcontext() if last else accel.no_sync(model)


def reduce_sum(accel: Any, x: float) -> float:
    """``x`` summed over the processes (``x`` itself in a single process)."""
    if accel.num_processes == 1:
        return float(x)
    return float(accel.reduce(torch.tensor(float(x), device=accel.device), reduction="sum"))


def clip_and_step(
    accel: Any, optimizer: Any, params: list[nn.Parameter], max_norm: float, *, finite: bool = True
) -> tuple[float, bool]:
    """Clip the gradient norm of ``params`` to ``max_norm`` (<= 0: no clipping), then step ``optimizer`` unless
    some process saw a non-finite gradient norm or passed ``finite=False`` (e.g. a NaN loss); gradients are
    zeroed either way. Returns (gradient norm, skipped)."""
    norm = float(accel.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf")))
    bad = reduce_sum(accel, float(not (finite and math.isfinite(norm)))) > 0
    if not bad:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm, bad


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise NLAError("the model has no trainable parameters")
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)


# ---------------------------------------------------------------------------------------- the loop
def fit(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    batches: Callable[[int], Iterable[Any]],
    cfg: TrainConfig,
    *,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    save_model: Callable[[nn.Module, Path], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``loss_fn`` over ``batches(epoch)``; resume from ``cfg.out_dir`` if it holds a checkpoint."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    out_dir = Path(cfg.out_dir)
    accel = Accelerator()
    main = accel.is_main_process
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    seed_all(cfg.seed)

    optimizer = _make_optimizer(model, cfg)
    wrapped, optimizer = accel.prepare(model, optimizer)
    step, epoch, batch_index, skipped, elapsed_before = 0, 0, 0, 0, 0.0
    checkpoint = Checkpoint(out_dir / CHECKPOINT, {WEIGHTS: model}, {"optimizer": optimizer}, keep=cfg.keep_last)
    state = checkpoint.load()
    resumed_from: int | None = None
    if state is not None:
        step, epoch, batch_index = int(state["step"]), int(state["epoch"]), int(state["batch_index"])
        skipped, elapsed_before = int(state["skipped"]), float(state["elapsed"])
        resumed_from = step
        log.info("resuming %s from step %d (epoch %d, batch %d)", out_dir, step, epoch, batch_index)
    bf16 = use_bf16(cfg.bf16, accel.device)
    tracker = Tracker(out_dir, cfg.log_with, enabled=main, config=dataclasses.asdict(cfg))
    tracker.drop_after(step)
    trainable = [p for p in model.parameters() if p.requires_grad]

    def run_eval() -> dict[str, float]:
        if evaluate is None:
            return {}
        raw = accel.unwrap_model(wrapped)
        raw.eval()
        with rng_isolated(), torch.no_grad():
            metrics = {k: float(v) for k, v in evaluate(raw).items()}
        raw.train()
        if accel.num_processes > 1:
            keys = sorted(metrics)
            vals = accel.reduce(torch.tensor([metrics[k] for k in keys], device=accel.device), reduction="mean")
            metrics = dict(zip(keys, vals.tolist(), strict=True))
        return metrics

    def epoch_iter(ep: int, skip: int) -> Iterator[Any]:
        it = iter(batches(ep))
        for _ in range(skip * accel.num_processes):  # drop what was already consumed
            if next(it, None) is None:
                break
        rank_it = (b for i, b in enumerate(it) if i % accel.num_processes == accel.process_index)
        return rank_it

    data = epoch_iter(epoch, batch_index)
    empty_epochs = 0
    t0 = time.perf_counter()
    last_loss = float("nan")
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train", disable=not main, dynamic_ncols=True)
    wrapped.train()
    try:
        while step < cfg.max_steps:
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            losses: list[float] = []
            for micro in range(cfg.grad_accum):
                batch = next(data, None)
                while batch is None:  # epoch over: start the next one
                    empty_epochs = empty_epochs + 1 if batch_index == 0 else 0
                    if empty_epochs > 1:
                        raise NLAError("the training data yields no batches")
                    epoch, batch_index = epoch + 1, 0
                    data = epoch_iter(epoch, 0)
                    batch = next(data, None)
                batch_index += 1
                batch = to_device(batch, accel.device)
                with grad_sync(accel, wrapped, micro == cfg.grad_accum - 1):
                    with bf16_autocast(accel.device, bf16):
                        loss = loss_fn(wrapped, batch)
                    accel.backward(loss.float() / cfg.grad_accum)
                losses.append(float(loss.detach()))
            grad_norm, bad = clip_and_step(
                accel, optimizer, trainable, cfg.max_grad_norm, finite=all(map(math.isfinite, losses))
            )
            if bad:
                skipped += 1
                log.warning(
                    "step %d: non-finite loss or gradient (loss %s, grad norm %s), skipped", step + 1, losses, grad_norm
                )
            step += 1
            last_loss = sum(losses) / len(losses)
            record: dict[str, Any] = {
                "step": step,
                "loss": last_loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "skipped": int(bad),
            }
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
                record.update({f"eval/{k}": v for k, v in run_eval().items()})
            record["elapsed"] = elapsed_before + time.perf_counter() - t0
            tracker.log(record)
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4f}")
            if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.max_steps:
                elapsed = elapsed_before + time.perf_counter() - t0
                checkpoint.save(
                    accel, step=step, epoch=epoch, batch_index=batch_index, skipped=skipped, elapsed=elapsed
                )
        bar.close()
        final_eval = run_eval()
        elapsed = elapsed_before + time.perf_counter() - t0
        if final_eval:
            log.info("final eval at step %d: %s", step, ", ".join(f"{k}={v:.4f}" for k, v in final_eval.items()))
            tracker.log({"step": step, **{f"eval/{k}": v for k, v in final_eval.items()}, "elapsed": elapsed})
        if save_model is not None and main:
            save_model(accel.unwrap_model(wrapped), out_dir / "final")
        accel.wait_for_everyone()
    finally:
        bar.close()
        tracker.close()
    return TrainResult(
        steps=step,
        skipped_nonfinite=skipped,
        final_eval=final_eval,
        out_dir=out_dir,
        final_loss=last_loss,
        resumed_from=resumed_from,
        elapsed_s=elapsed,
    )


__all__ = [
    "CHECKPOINT",
    "WEIGHTS",
    "TrainConfig",
    "TrainResult",
    "bf16_autocast",
    "clip_and_step",
    "fit",
    "grad_sync",
    "load_trainable_state",
    "lr_at",
    "reduce_sum",
    "to_device",
    "trainable_state",
    "use_bf16",
]
