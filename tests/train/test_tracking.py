"""The shared metrics sink (nla.train.tracking.Tracker): metrics.jsonl, trimming on resume, the optional sinks."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from nla.common.errors import NLAError
from nla.train.tracking import METRICS, Tracker, read_metrics

HAS_TB = importlib.util.find_spec("tensorboard") is not None


def test_log_and_drop_after(tmp_path: Path) -> None:
    t = Tracker(tmp_path, step_key="reward_mean")
    for step in (1, 2, 3):
        t.log({"step": step, "reward_mean": -step})
    t.log({"step": 3, "final": True, "eval/fve": 0.5})
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 3]
    t.drop_after(3)  # a resume from the step-3 checkpoint redoes the final record only
    assert list(read_metrics(tmp_path))[-1] == {"step": 3, "reward_mean": -3}
    t.drop_after(1)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]
    t.drop_after(0)  # a fresh run forgets what an earlier session wrote before its first checkpoint
    assert list(read_metrics(tmp_path)) == [] and (tmp_path / METRICS).exists()
    assert list(read_metrics(tmp_path / "missing")) == []


def test_disabled_tracker_writes_nothing(tmp_path: Path) -> None:
    t = Tracker(tmp_path, "tensorboard", enabled=False)  # other ranks: no sink is even imported
    t.log({"step": 1, "loss": 1.0})
    t.drop_after(0)
    t.close()
    assert not (tmp_path / METRICS).exists()


class FakeWriter:
    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []
        self.closed = False

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def close(self) -> None:
        self.closed = True


def test_tensorboard_sink_gets_numeric_scalars(tmp_path: Path) -> None:
    t = Tracker(tmp_path)
    t.tb = FakeWriter()
    t.log({"step": 4, "loss": 0.5, "skipped": 0, "final": True, "note": "x", "reward/length": -1.0})
    t.close()
    assert t.tb.scalars == [("loss", 0.5, 4), ("skipped", 0, 4), ("reward/length", -1.0, 4)] and t.tb.closed
    assert json.loads((tmp_path / METRICS).read_text())["note"] == "x"


def test_unknown_or_missing_sink(tmp_path: Path) -> None:
    with pytest.raises(NLAError, match="log_with"):
        Tracker(tmp_path, "mlflow")
    if not HAS_TB:
        with pytest.raises(NLAError, match="pip install tensorboard"):
            Tracker(tmp_path, "tensorboard")


@pytest.mark.skipif(not HAS_TB, reason="tensorboard is not installed")
def test_real_tensorboard_events(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    t = Tracker(tmp_path, "tensorboard")
    t.log({"step": 1, "loss": 2.0})
    t.log({"step": 2, "loss": 1.0})
    t.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 2.0), (2, 1.0)]
