"""How many CPU threads torch uses: ``--threads N``, else ``NLA_THREADS`` / ``OMP_NUM_THREADS``, else automatic.

Why not torch's default (one thread per core): torch's intra-op threads wait for each other at every
operation, so one thread sharing its core with another busy process stalls all of them. Measured on a
2-core machine with a second job running, greedy explanations took 8x longer with torch's 2 threads than
with 1 (docs/explain.md). On an idle machine every core helps. So the automatic rule looks at how busy
the CPUs are right now and leaves the busy ones alone:

    threads = max(1, cores - busy), counting a core as busy from 0.25 of a core used by other processes

``cores`` is what this process may use (CPU affinity, capped by a cgroup CPU quota); ``busy`` is the CPU
time other processes used over 0.2 s, read from ``/proc/stat`` (where there is none: the 1-minute load
average). The probe costs 0.2 s once per command.

>>> resolve_threads(3)
3
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

from nla.common.errors import NLAError

log = logging.getLogger(__name__)

BUSY_SLACK = 0.25  # a core is given up as soon as other processes use this share of one
PROBE_SECONDS = 0.2


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota when there is one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _cpu_times(cpus: set[int] | None) -> tuple[float, float] | None:
    """(busy, total) jiffies summed over ``cpus`` (all when None), from /proc/stat; None where unreadable."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = total = 0.0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        vals = [float(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
        idle = vals[3] + vals[4]
        total += sum(vals)
        busy += sum(vals) - idle
    return (busy, total) if total > 0 else None


def busy_cores(seconds: float = PROBE_SECONDS) -> float | None:
    """Cores' worth of CPU that OTHER processes use right now (this one sleeps while it measures)."""
    try:
        cpus: set[int] | None = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = None
    a = _cpu_times(cpus)
    if a is None:
        try:
            return float(os.getloadavg()[0])
        except (AttributeError, OSError):
            return None
    time.sleep(seconds)
    b = _cpu_times(cpus)
    if b is None or b[1] <= a[1]:
        return None
    n = len(cpus) if cpus is not None else (os.cpu_count() or 1)
    return n * (b[0] - a[0]) / (b[1] - a[1])


def auto_threads(cores: int | None = None, busy: float | None = None) -> int:
    """The automatic rule of the module docstring (``busy`` measured when not given)."""
    cores = usable_cores() if cores is None else cores
    busy = busy_cores() if busy is None else busy
    if busy is None:
        return cores
    return max(1, min(cores, cores - math.floor(max(0.0, busy) + 1 - BUSY_SLACK)))


def resolve_threads(requested: int | None) -> int:
    """The thread count to use: ``requested``, else ``NLA_THREADS``, else ``OMP_NUM_THREADS``, else automatic."""
    if requested is not None:
        if requested < 1:
            raise NLAError(f"--threads must be >= 1, got {requested}")
        return requested
    for var in ("NLA_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value:
            try:
                n = int(value)
            except ValueError as e:
                raise NLAError(f"{var}={value!r} is not a whole number of threads") from e
            if n < 1:
                raise NLAError(f"{var} must be >= 1, got {n}")
            return n
    return auto_threads()


def set_threads(requested: int | None) -> int:
    """Resolve the thread count and apply it to torch (before any model work); returns it."""
    import torch

    n = resolve_threads(requested)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    log.debug("torch uses %d CPU thread(s) (%d usable cores)", n, usable_cores())
    return n


__all__ = ["auto_threads", "busy_cores", "resolve_threads", "set_threads", "usable_cores"]
