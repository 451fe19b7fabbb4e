from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from nla.common.errors import NLAError
from nla.train.loop import TrainConfig, clip_and_step, fit, lr_at, to_device, use_bf16


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.2), nn.Linear(16, 1))  # dropout exercises RNG resume


def _data(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g)
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])


def _batches(
    x: torch.Tensor,
    y: torch.Tensor,
    bs: int = 4,
    *,
    crash_at: int | None = None,
    nan_at: set[int] | None = None,
):
    """Seeded per-epoch shuffles; optionally raise at the `crash_at`-th batch overall, or NaN some batches."""
    seen = [0]

    def batches(epoch: int):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(x), bs):
            seen[0] += 1
            if crash_at is not None and seen[0] == crash_at:
                raise RuntimeError("injected crash")
            rows = order[i : i + bs]
            xb = x[rows].clone()
            if nan_at and (epoch, i // bs) in nan_at:
                xb[0, 0] = float("nan")
            yield {"x": xb, "y": y[rows]}

    return batches


def _loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return ((model(batch["x"]) - batch["y"]) ** 2).mean()


def _cfg(out: Path, **kw) -> TrainConfig:
    base = dict(
        out_dir=str(out),
        max_steps=10,
        batch_size=4,
        lr=0.05,
        warmup_steps=2,
        eval_every=0,
        save_every=0,
        seed=3,
    )
    base.update(kw)
    return TrainConfig(**base)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_lr_schedule_warmup_then_cosine() -> None:
    cfg = TrainConfig(max_steps=110, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 110))


def test_loss_falls_and_outputs_are_written(tmp_path: Path) -> None:
    x, y = _data()
    model = _model()
    evals, saved = [], []

    def evaluate(m: nn.Module) -> dict[str, float]:
        assert not m.training
        evals.append(1)
        return {"mse": float(((m(x) - y) ** 2).mean())}

    res = fit(model, _loss, _batches(x, y), _cfg(tmp_path, max_steps=30, eval_every=10), evaluate=evaluate,
              save_model=lambda m, p: saved.append(p))  # fmt: skip
    recs = _records(tmp_path)
    steps = [r for r in recs if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 31))
    assert sum(r["loss"] for r in steps[-5:]) < 0.3 * sum(r["loss"] for r in steps[:5])
    assert len(evals) == 3  # steps 10, 20 and the final one
    assert "eval/mse" in recs[9] and res.final_eval["mse"] < recs[9]["eval/mse"]
    assert saved == [tmp_path / "final"]
    assert (res.steps, res.skipped_nonfinite, res.resumed_from) == (30, 0, None)
    assert (tmp_path / "checkpoint" / "trainable.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_resume_after_crash_equals_uninterrupted_run(tmp_path: Path, grad_accum: int) -> None:
    x, y = _data()
    kw = dict(max_steps=9, save_every=2, eval_every=3, grad_accum=grad_accum)

    def evaluate(m: nn.Module) -> dict[str, float]:
        torch.rand(3)  # evaluation must not disturb the training RNG stream
        return {"mse": float(((m(x) - y) ** 2).mean())}

    ref = _model()
    fit(ref, _loss, _batches(x, y), _cfg(tmp_path / "a", **kw), evaluate=evaluate)

    crashed = _model()
    with pytest.raises(RuntimeError, match="injected crash"):  # dies during step 6, after the step-4 checkpoint
        fit(
            crashed,
            _loss,
            _batches(x, y, crash_at=5 * grad_accum + 1),
            _cfg(tmp_path / "b", **kw),
            evaluate=evaluate,
        )
    resumed = _model(seed=123)  # a fresh process: weights come from the checkpoint
    res = fit(resumed, _loss, _batches(x, y), _cfg(tmp_path / "b", **kw), evaluate=evaluate)

    assert res.resumed_from == 4 and res.steps == 9
    for a, b in zip(ref.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    a_steps = [r["loss"] for r in _records(tmp_path / "a") if "loss" in r]
    b_steps = [r["loss"] for r in _records(tmp_path / "b") if "loss" in r]
    assert a_steps == b_steps  # no duplicated records from the crashed session either


def test_continue_with_more_steps_on_constant_lr(tmp_path: Path) -> None:
    x, y = _data()
    kw = dict(warmup_steps=0, min_lr_ratio=1.0)

    def evaluate(m: nn.Module) -> dict[str, float]:
        return {"r": float(torch.rand(1))}  # the final eval of the short run must not shift the RNG

    ref = _model()
    fit(ref, _loss, _batches(x, y), _cfg(tmp_path / "a", max_steps=8, **kw), evaluate=evaluate)
    part = _model()
    fit(part, _loss, _batches(x, y), _cfg(tmp_path / "b", max_steps=5, **kw), evaluate=evaluate)
    more = _model()
    res = fit(more, _loss, _batches(x, y), _cfg(tmp_path / "b", max_steps=8, **kw), evaluate=evaluate)
    assert res.resumed_from == 5
    for a, b in zip(ref.parameters(), more.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    done = fit(_model(), _loss, _batches(x, y), _cfg(tmp_path / "b", max_steps=8, **kw), evaluate=evaluate)
    assert (done.steps, done.resumed_from) == (8, 8)
    recs = _records(tmp_path / "b")
    assert [r["step"] for r in recs] == [*range(1, 9), 8] and "eval/r" in recs[-1]


def test_nonfinite_steps_are_skipped_and_counted(tmp_path: Path) -> None:
    x, y = _data(8)  # 2 batches per epoch
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    res = fit(model, _loss, _batches(x, y, nan_at={(0, 0), (0, 1)}), _cfg(tmp_path, max_steps=2))
    assert res.skipped_nonfinite == 2
    for a, b in zip(before, model.parameters(), strict=True):
        assert torch.equal(a, b)  # optimizer never stepped
    model2 = _model()
    res2 = fit(model2, _loss, _batches(x, y, nan_at={(0, 1)}), _cfg(tmp_path / "c", max_steps=4))
    assert res2.skipped_nonfinite == 1
    assert all(torch.isfinite(p).all() for p in model2.parameters())
    assert [r["skipped"] for r in _records(tmp_path / "c")] == [0, 1, 0, 0]


def test_multiple_epochs_and_frozen_params(tmp_path: Path) -> None:
    x, y = _data(8)
    model = _model()
    model[0].requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    res = fit(model, _loss, _batches(x, y), _cfg(tmp_path, max_steps=7))
    assert res.steps == 7 and math.isfinite(res.final_loss)
    assert torch.equal(model[0].weight, frozen)


def test_errors(tmp_path: Path) -> None:
    x, y = _data(8)
    with pytest.raises(NLAError, match="no batches"):
        fit(_model(), _loss, lambda epoch: iter(()), _cfg(tmp_path / "a", max_steps=2))
    fit(_model(), _loss, _batches(x, y), _cfg(tmp_path / "b", max_steps=2))
    other = nn.Linear(4, 1)
    with pytest.raises(NLAError, match="does not match"):
        fit(other, lambda m, b: m(b["x"]).mean(), _batches(x, y), _cfg(tmp_path / "b", max_steps=4))
    with pytest.raises(ValueError):
        TrainConfig(max_steps=0)


def test_to_device_handles_nested_batches() -> None:
    from transformers import BatchEncoding

    batch = {"a": [torch.zeros(1), (torch.ones(1), 3)], "enc": BatchEncoding({"ids": torch.zeros(2)})}
    moved = to_device(batch, torch.device("cpu"))
    assert moved["a"][1][1] == 3 and isinstance(moved["enc"], BatchEncoding)


def test_rerun_after_a_crash_before_the_first_checkpoint_starts_clean(tmp_path: Path) -> None:
    x, y = _data()
    with pytest.raises(RuntimeError, match="injected crash"):
        fit(_model(), _loss, _batches(x, y, crash_at=4), _cfg(tmp_path, max_steps=6))
    assert [r["step"] for r in _records(tmp_path)] == [1, 2, 3] and not (tmp_path / "checkpoint").exists()
    res = fit(_model(), _loss, _batches(x, y), _cfg(tmp_path, max_steps=6))
    assert res.resumed_from is None and [r["step"] for r in _records(tmp_path)] == list(range(1, 7))


def test_clip_and_step_and_bf16_choice() -> None:
    from accelerate import Accelerator

    accel = Accelerator(cpu=True)
    w = nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([w], lr=1.0)
    w.grad = torch.tensor([3.0, 4.0])
    norm, skipped = clip_and_step(accel, opt, [w], max_norm=1.0)
    assert (norm, skipped, w.grad) == (5.0, False, None)
    torch.testing.assert_close(w.detach(), torch.tensor([-0.6, -0.8]))  # clipped to norm 1
    for grad, finite in ((torch.tensor([float("nan"), 0.0]), True), (torch.tensor([1.0, 0.0]), False)):
        w.grad = grad
        assert clip_and_step(accel, opt, [w], max_norm=0.0, finite=finite)[1] is True
        torch.testing.assert_close(w.detach(), torch.tensor([-0.6, -0.8]))  # skipped: unchanged
    assert use_bf16("true", torch.device("cpu")) and not use_bf16("auto", torch.device("cpu"))
    assert not use_bf16("false", torch.device("cuda"))
