"""Run metrics, shared by the SFT loop and joint RL: ``metrics.jsonl`` (one JSON record per step) plus the
optional TensorBoard / Weights & Biases sinks chosen by the ``log_with`` option (imported only when chosen).

>>> tracker = Tracker(Path("runs/x"), "tensorboard", config={"lr": 1e-4})  # doctest: +SKIP
>>> tracker.drop_after(resumed_step); tracker.log({"step": 1, "loss": 0.5}); tracker.close()  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nla.common.errors import NLAError
from nla.common.paths import atomic_write_text

METRICS = "metrics.jsonl"
LOG_WITH = ["none", "tensorboard", "wandb"]


class Tracker:
    """``metrics.jsonl`` plus the optional tensorboard / wandb sinks (``log_with``); writes only when ``enabled``
    (the main process). ``step_key`` is a key every training-step record has: on resume the records after the
    checkpoint, and records at its step without that key (a final evaluation), are dropped and redone."""

    def __init__(
        self,
        out_dir: Path,
        log_with: str = "none",
        *,
        enabled: bool = True,
        config: dict[str, Any] | None = None,
        step_key: str = "loss",
    ) -> None:
        self.path, self.enabled, self.step_key = Path(out_dir) / METRICS, enabled, step_key
        self.tb: Any = None
        self.wandb: Any = None
        if not enabled or log_with == "none":
            return
        if log_with == "tensorboard":
            writer = _optional("torch.utils.tensorboard", "tensorboard").SummaryWriter
            self.tb = writer(str(Path(out_dir) / "tensorboard"))
        elif log_with == "wandb":
            self.wandb = _optional("wandb", "wandb").init(
                project="nla", dir=str(out_dir), config=config or {}, resume="allow"
            )
        else:
            raise NLAError(f"log_with must be none, tensorboard or wandb, got {log_with!r}")

    def drop_after(self, step: int) -> None:
        """Forget the records the checkpoint at ``step`` does not contain (all of them at step 0)."""
        if not self.enabled or not self.path.exists():
            return
        lines = [line for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
        keep = [line for line in lines if self._kept(json.loads(line), step)]
        atomic_write_text(self.path, "".join(line + "\n" for line in keep))

    def _kept(self, record: dict[str, Any], step: int) -> bool:
        at = int(record.get("step", 0))
        return at < step or (at == step and self.step_key in record)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        step = int(record["step"])
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _optional(module: str, package: str) -> Any:
    """Import an optional tracker backend, or say which package to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise NLAError(f"--log-with {package} needs the {package} package: pip install {package}") from e


def read_metrics(out_dir: str | Path) -> Iterator[dict[str, Any]]:
    """The records of ``<out_dir>/metrics.jsonl`` (none if it does not exist)."""
    path = Path(out_dir) / METRICS
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                yield json.loads(line)


__all__ = ["LOG_WITH", "METRICS", "Tracker", "read_metrics"]
