"""The shared resume machinery (nla.train.checkpoint): RNG streams and checkpoint directories."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from torch import nn

from nla.common.errors import NLAError
from nla.train.checkpoint import STATE, Checkpoint, rng_isolated, rng_state, seed_all, set_rng_state


def draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_rng_state_restores_every_stream() -> None:
    seed_all(5)
    saved = rng_state()
    first = draws()
    set_rng_state(saved)
    assert draws() == first
    with rng_isolated():
        draws()
    assert draws() != first  # isolation restored the state after the block, not before the earlier draws
    set_rng_state({"torch": saved["torch"]})  # an old RL checkpoint saved only the torch stream
    assert float(torch.rand(1)) == first[2]


def models() -> tuple[nn.Module, nn.Module, torch.optim.Optimizer]:
    a, b = nn.Linear(3, 2), nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    b[1].requires_grad_(False)  # frozen parameters are not stored
    opt = torch.optim.AdamW(a.parameters(), lr=0.1)
    a(torch.ones(1, 3)).sum().backward()
    opt.step()
    return a, b, opt


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    accel = Accelerator(cpu=True)
    torch.manual_seed(0)
    a, b, opt = models()
    ckpt = Checkpoint(tmp_path / "checkpoint", {"a.safetensors": a, "b.safetensors": b}, {"opt": opt, "none": None})
    assert ckpt.load() is None
    ckpt.save(accel, step=7, elapsed=1.5)
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["a.safetensors", "b.safetensors", STATE]
    assert set(load_file(str(tmp_path / "checkpoint" / "b.safetensors"))) == {"0.weight", "0.bias"}
    after_save = float(torch.rand(1))

    torch.manual_seed(1)
    a2, b2, opt2 = models()
    state = Checkpoint(tmp_path / "checkpoint", {"a.safetensors": a2, "b.safetensors": b2}, {"opt": opt2}).load()
    assert state is not None and (state["step"], state["elapsed"], state["none"]) == (7, 1.5, None)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), a2.state_dict().values(), strict=True))
    assert torch.equal(b[0].weight, b2[0].weight) and not torch.equal(b[1].weight, torch.zeros(2))
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert float(torch.rand(1)) == after_save  # the RNG stream continues where the checkpoint left it

    with pytest.raises(NLAError, match="does not match"):
        Checkpoint(tmp_path / "checkpoint", {"a.safetensors": nn.Linear(3, 3)}, {}).load()


def test_keep_last_snapshots(tmp_path: Path) -> None:
    accel = Accelerator(cpu=True)
    a, b, opt = models()
    ckpt = Checkpoint(tmp_path / "checkpoint", {"a.safetensors": a}, {"opt": opt}, keep=2)
    weights = {}
    for step in (5, 10, 15):
        with torch.no_grad():
            a.weight.fill_(step)
        ckpt.save(accel, step=step, elapsed=0.0)
        weights[step] = load_file(str(tmp_path / "checkpoint" / "a.safetensors"))["weight"]
    assert [p.name for p in ckpt.snapshots()] == ["checkpoint-0000010", "checkpoint-0000015"]
    for snap, step in zip(ckpt.snapshots(), (10, 15), strict=True):  # each snapshot holds its own step's bytes
        assert torch.equal(load_file(str(snap / "a.safetensors"))["weight"], weights[step])
        assert torch.load(snap / STATE, weights_only=True)["step"] == step
    # resume reads checkpoint/ (the last save); a snapshot put in its place resumes from that step
    assert Checkpoint(tmp_path / "checkpoint", {"a.safetensors": a}, {"opt": opt}).load()["step"] == 15
    with pytest.raises(NLAError, match="keep_last"):
        Checkpoint(tmp_path / "x", {}, {}, keep=0)
