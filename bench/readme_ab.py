"""The README job, old code against new code, A B A B: wall time, CPU time and peak memory of each run.

    nla explain "The Eiffel Tower is in Paris." --html <tmp>/explain.html

Each run is a fresh process (``python -m nla.cli``) under ``/usr/bin/time -v`` with ``PYTHONPATH`` set to
one checkout's ``src``; the two checkouts take turns (A B A B ...) after one untimed warm-up run of each,
so a drift in the machine's load hits both. Both use nla's default thread rule. Prints every run, the
medians and the median ratio old/new, the CPU model and the load average.

    python bench/readme_ab.py --old /work/main/src --new src --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEXT = "The Eiffel Tower is in Paris."


def run(src: Path, html: Path, extra: list[str]) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NLA_THREADS")}
    env["PYTHONPATH"] = str(src)
    jsonl = html.with_suffix(".jsonl")
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "nla.cli", "explain", TEXT, "--html", str(html)]
    cmd += ["--jsonl", str(jsonl), *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"the job failed ({done.returncode}):\n{done.stderr[-2000:]}")

    def field(name: str) -> float:
        m = re.search(rf"{re.escape(name)}: ([\d.]+)", done.stderr)
        return float(m.group(1)) if m else float("nan")

    return {
        "wall_s": round(wall, 1),
        "user_s": field("User time (seconds)"),
        "peak_mb": round(field("Maximum resident set size (kbytes)") / 1024, 1),
        "load1": round(os.getloadavg()[0], 1),
        "explanations": [json.loads(line).get("explanation") for line in jsonl.read_text().splitlines() if line],
    }


def cpu_model() -> str:
    try:
        return next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, required=True, help="src directory of the old checkout")
    ap.add_argument("--new", type=Path, required=True, help="src directory of the new checkout")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-warmup", action="store_true", help="Skip the untimed runs (caches already warm).")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="More `nla explain` options (last).")
    args = ap.parse_args()
    old, new = args.old.resolve(), args.new.resolve()
    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="nla-readme-ab-") as tmp:
        html = Path(tmp) / "explain.html"
        for name, src in () if args.no_warmup else (("old", old), ("new", new)):
            print(f"warm-up {name}: {run(src, html, args.extra)['wall_s']} s", flush=True)
        for _ in range(args.repeats):
            for name, src in (("old", old), ("new", new)):
                r = run(src, html, args.extra)
                runs[name].append(r)
                print(name, json.dumps({k: v for k, v in r.items() if k != "explanations"}), flush=True)
    med = {k: statistics.median(r["wall_s"] for r in v) for k, v in runs.items()}
    print(f"\nCPU: {cpu_model()}, {os.cpu_count()} CPUs (shared; load average at each run above)")
    for k in ("old", "new"):
        rs = runs[k]
        print(
            f"{k}: median {med[k]:.1f} s (runs {[r['wall_s'] for r in rs]}), user CPU "
            f"{statistics.median(r['user_s'] for r in rs):.1f} s, peak {max(r['peak_mb'] for r in rs):.0f} MB"
        )
    print(f"median ratio old/new: {med['old'] / med['new']:.2f}x")
    a, b = runs["old"][0]["explanations"], runs["new"][0]["explanations"]
    print(f"chosen explanations identical old vs new: {sum(x == y for x, y in zip(a, b, strict=False))}/{len(a)}")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "medians": med, "cpu": cpu_model()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
