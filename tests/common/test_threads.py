"""The thread-count rule: explicit > NLA_THREADS > OMP_NUM_THREADS > automatic (leave busy cores alone)."""

from __future__ import annotations

import pytest

from nla.common.errors import NLAError
from nla.common.threads import auto_threads, busy_cores, resolve_threads, usable_cores


@pytest.mark.parametrize(
    "cores, busy, want",
    [
        (2, 0.0, 2),
        (2, 0.2, 2),
        (2, 0.25, 1),
        (2, 1.0, 1),
        (2, 5.0, 1),
        (16, 3.1, 13),
        (16, 3.3, 12),
        (16, 0.0, 16),
        (1, 0.9, 1),
    ],
)
def test_auto_rule(cores: int, busy: float, want: int) -> None:
    assert auto_threads(cores, busy) == want


def test_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NLA_THREADS", "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert resolve_threads(7) == 7 and resolve_threads(None) == 3
    monkeypatch.delenv("NLA_THREADS")
    assert resolve_threads(None) == 5
    monkeypatch.setenv("OMP_NUM_THREADS", "x")
    with pytest.raises(NLAError, match="OMP_NUM_THREADS"):
        resolve_threads(None)
    with pytest.raises(NLAError, match=">= 1"):
        resolve_threads(0)
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert 1 <= resolve_threads(None) <= usable_cores()


def test_busy_cores_sees_a_busy_loop() -> None:
    """A spinning child process shows up as about one busy core (only where /proc/stat exists)."""
    import multiprocessing as mp
    import os
    import time

    if not os.path.exists("/proc/stat") or usable_cores() < 1:
        pytest.skip("no /proc/stat")
    idle_before = busy_cores(0.3)
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=_spin, args=(2.0,), daemon=True)
    p.start()
    try:
        time.sleep(0.5)
        busy = busy_cores(0.5)
    finally:
        p.terminate()
        p.join()
    assert busy is not None and idle_before is not None
    assert busy >= 0.7  # the spinner alone uses one core (others may add more on a shared machine)


def _spin(seconds: float) -> None:
    import time

    end = time.time() + seconds
    while time.time() < end:
        pass
