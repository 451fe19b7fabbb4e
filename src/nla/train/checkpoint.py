"""Exact resume, shared by the SFT loop (:mod:`nla.train.loop`) and joint RL (:mod:`nla.train.rl`).

A run seeds every random stream (:func:`seed_all`); a :class:`Checkpoint` directory holds the trainable weights
(safetensors, one file per model), the optimizer states, the RNG streams (:func:`rng_state`) and the caller's
counters, written atomically, so a run killed at any point and started again with the same ``out_dir`` ends
with the same weights as one that was never interrupted.

>>> ckpt = Checkpoint(Path("runs/x/checkpoint"), {"trainable.safetensors": model}, {"optimizer": opt})  # doctest: +SKIP
>>> state = ckpt.load()  # None on a fresh run, else the saved counters (weights and RNG already restored)
>>> ckpt.save(accel, step=10)                                                                         # doctest: +SKIP

With ``keep=N > 1`` every save also leaves a snapshot ``checkpoint-<step>/`` (hard links to the files just
written, so the newest costs no extra disk) and the oldest snapshots beyond the last N are deleted; resume
always reads ``checkpoint/``. To go back to an earlier step, replace ``checkpoint/`` with a snapshot and run
again (metrics logged after that step are dropped on resume).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nla.common.errors import NLAError
from nla.common.paths import atomic_dir

STATE = "state.pt"


def seed_all(seed: int) -> None:
    """Seed the python, numpy and torch (CPU + CUDA) random streams."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def rng_state() -> dict[str, Any]:
    """Every random stream a run draws from (python, numpy, torch, CUDA), in a form ``torch.save`` can hold."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved; streams missing from ``state`` (older checkpoints) are left alone."""
    if "python" in state:
        random.setstate(_as_tuple(state["python"]))
    if "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


@contextlib.contextmanager
def rng_isolated() -> Iterator[None]:
    """Run a block (evaluation) without disturbing the training RNG streams."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters of ``model`` on the CPU, by name (what a resumable checkpoint stores)."""
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, weights: dict[str, torch.Tensor], where: str) -> None:
    """Copy ``weights`` into the trainable parameters of ``model``; they must match name for name and in shape."""
    params = dict(model.named_parameters())
    wanted = {n for n, p in params.items() if p.requires_grad}
    reshaped = [n for n in set(weights) & wanted if weights[n].shape != params[n].shape]
    if set(weights) != wanted or reshaped:
        raise NLAError(
            f"checkpoint {where} does not match the model's trainable parameters "
            f"({len(set(weights) - wanted)} unexpected, {len(wanted - set(weights))} missing, "
            f"{len(reshaped)} of another shape): change out_dir or use the same model options as the interrupted run"
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)


class Checkpoint:
    """A resumable checkpoint directory, written atomically by the main process: the trainable weights of each
    model in its own safetensors file (``models``: file name -> module) and ``state.pt`` with the optimizer
    states (``optimizers``: key -> optimizer or None), the RNG streams and the caller's counters; ``keep``: how
    many of the last saves stay as ``<path>-<step>/`` snapshots besides ``path`` (1 = none)."""

    def __init__(self, path: Path, models: dict[str, nn.Module], optimizers: dict[str, Any], keep: int = 1) -> None:
        if keep < 1:
            raise NLAError(f"keep_last must be >= 1 (got {keep}): the checkpoint resume reads is always kept")
        self.path, self.models, self.optimizers, self.keep = Path(path), models, optimizers, keep

    def save(self, accel: Any, **counters: Any) -> None:
        from safetensors.torch import save_file

        accel.wait_for_everyone()
        if accel.is_main_process:
            state = {**counters, "rng": rng_state()}
            state.update({k: None if opt is None else opt.state_dict() for k, opt in self.optimizers.items()})
            with atomic_dir(self.path) as tmp:
                for file, model in self.models.items():
                    save_file(trainable_state(accel.unwrap_model(model)), str(tmp / file))
                torch.save(state, tmp / STATE)
            if self.keep > 1:
                self._snapshot(int(counters.get("step", 0)))
        accel.wait_for_everyone()

    def snapshots(self) -> list[Path]:
        """The ``<path>-<step>/`` snapshots, oldest first."""
        steps = {p: _snapshot_step(p, self.path.name) for p in self.path.parent.glob(self.path.name + "-*")}
        return sorted((p for p, step in steps.items() if step is not None), key=lambda p: steps[p] or 0)

    def _snapshot(self, step: int) -> None:
        with atomic_dir(self.path.with_name(f"{self.path.name}-{step:07d}")) as tmp:
            for f in self.path.iterdir():
                try:
                    os.link(f, tmp / f.name)  # the next save writes new files, so the link keeps these bytes
                except OSError:  # a file system without hard links
                    shutil.copy2(f, tmp / f.name)
        for old in self.snapshots()[: -self.keep]:
            shutil.rmtree(old)

    def load(self) -> dict[str, Any] | None:
        """Restore weights, optimizer states and RNG streams; returns the saved state (None: no checkpoint)."""
        from safetensors.torch import load_file

        if not (self.path / STATE).exists():
            return None
        state = torch.load(self.path / STATE, weights_only=True, map_location="cpu")
        for file, model in self.models.items():
            load_trainable_state(model, load_file(str(self.path / file)), str(self.path / file))
        for key, opt in self.optimizers.items():
            if opt is not None and state.get(key) is not None:
                opt.load_state_dict(state[key])
        set_rng_state(state["rng"])
        return state


def _snapshot_step(path: Path, name: str) -> int | None:
    """The step of a ``<name>-<step>/`` snapshot folder (None for anything else)."""
    step = path.name.removeprefix(name + "-")
    return int(step) if path.is_dir() and step != path.name and step.isdigit() else None


def checkpoint_dirs(folder: Path, name: str) -> list[Path]:
    """Every resume checkpoint ``<name>/`` under ``folder`` and its ``keep`` snapshots ``<name>-<step>/``."""
    return [p for p in Path(folder).rglob(name + "*") if p.is_dir() and (p.name == name or _snapshot_step(p, name))]


__all__ = [
    "STATE",
    "Checkpoint",
    "checkpoint_dirs",
    "load_trainable_state",
    "rng_isolated",
    "rng_state",
    "seed_all",
    "set_rng_state",
    "trainable_state",
]
