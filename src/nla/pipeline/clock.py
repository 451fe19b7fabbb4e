"""The running time of a pipeline stage over all its attempts.

A long run is killed and resumed (a session ends, a SIGKILL): the seconds of the attempt that finishes a stage
are then only its last part. :class:`StageClock` keeps ``<run_dir>/stage_seconds.json``, ``{stage: {"seconds":
s, "attempts": n}}``, saved when an attempt starts and every ``every`` seconds while it runs (a kill loses at
most that much), so the stage's DONE marker and the card's compute block give the time the stage really ran,
not counting the hours in which nothing ran.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from nla.common.paths import atomic_write_text

CLOCK_FILE = "stage_seconds.json"


def read_clock(run_dir: Path) -> dict[str, dict[str, Any]]:
    path = Path(run_dir) / CLOCK_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def reset_clock(run_dir: Path, stages: list[str]) -> None:
    """Forget the time of ``stages`` (``--from`` redoes them from nothing)."""
    clock = read_clock(run_dir)
    if any(s in clock for s in stages):
        atomic_write_text(Path(run_dir) / CLOCK_FILE, json.dumps({k: v for k, v in clock.items() if k not in stages}))


class StageClock:
    """``with StageClock(run_dir, "av_sft") as clock: ...``; ``clock.seconds()`` is this stage's time over all
    its attempts so far (earlier ones as last saved), ``clock.attempts`` how many attempts ran it."""

    def __init__(self, run_dir: Path, stage: str, every: float = 30.0) -> None:
        self.path, self.stage, self.every = Path(run_dir) / CLOCK_FILE, stage, every
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._tick, name=f"clock-{stage}", daemon=True)
        self.t1: float | None = None

    def __enter__(self) -> StageClock:
        earlier = read_clock(self.path.parent).get(self.stage, {})
        self.before, self.attempts = float(earlier.get("seconds", 0.0)), int(earlier.get("attempts", 0)) + 1
        self.t0 = time.perf_counter()
        self._save()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.t1 = time.perf_counter()
        self._save()

    def seconds(self) -> float:
        return self.before + (self.t1 if self.t1 is not None else time.perf_counter()) - self.t0

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            self._save()

    def _save(self) -> None:
        with self._lock:  # the ticking thread and the stage's own thread
            clock = read_clock(self.path.parent)
            clock[self.stage] = {"seconds": round(self.seconds(), 3), "attempts": self.attempts}
            atomic_write_text(self.path, json.dumps(clock, indent=2) + "\n")
