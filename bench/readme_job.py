"""Time the README's main job, warm, on an idle machine and beside a second CPU-bound job, with torch's old
default thread count and with nla's default (``nla.common.threads``: automatic).

    nla explain "The Eiffel Tower is in Paris." --html <a folder outside the repository>/explain.html

Each run is a fresh process (``python -m nla.cli``, this checkout's ``src`` first on the path), like a
user's. One untimed run first warms the caches (model conversion, page cache). The second job is a
single-threaded busy loop (one core's worth). "old default" passes ``--threads T`` with T = torch's own
default in a clean process (one per core); "nla default" passes nothing. OMP_NUM_THREADS, MKL_NUM_THREADS
and NLA_THREADS are removed from the environment of every run. Before each condition the script measures
how busy the machine already is (``busy_cores``), so an "idle" row on a shared machine says so.

    python bench/readme_job.py                          # 2 repeats of each of the 4 conditions
    python bench/readme_job.py --repeats 1 --json ~/nla-runs/readme_job.json
    python bench/readme_job.py --extra --best-of 1      # the same matrix for a greedy job
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

ROOT = Path(__file__).resolve().parents[1]
TEXT = "The Eiffel Tower is in Paris."


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NLA_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    return env


def torch_default_threads() -> int:
    out = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


def run_job(html: Path, threads: int | None, extra: list[str]) -> tuple[float, int | None, str]:
    """Wall seconds of one job, the thread count it used (from its -v log) and its own timing note
    (generation time beside the estimate made before it)."""
    cmd = [sys.executable, "-m", "nla.cli", "-v", "explain", TEXT, "--html", str(html), *extra]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"the job failed ({done.returncode}):\n{done.stderr[-2000:]}")
    used = re.search(r"torch uses (\d+) CPU thread", done.stderr)
    note = re.search(r"explanations in \d+ batches took (.*)", done.stdout)
    return seconds, int(used.group(1)) if used else None, note.group(1).strip() if note else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="More `nla explain` options (last).")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from nla.common.threads import busy_cores, usable_cores

    old = torch_default_threads()
    results = []
    with tempfile.TemporaryDirectory(prefix="nla-readme-job-") as tmp:
        html = Path(tmp) / "explain.html"
        first, _, _ = run_job(html, None, args.extra)  # warm-up, not in the table
        print(f"warm-up run: {first:.1f} s; usable cores {usable_cores()}; torch's default threads {old}", flush=True)
        for load in ("idle", "busy"):
            hog = None
            if load == "busy":
                hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                time.sleep(2.0)
            try:
                busy = busy_cores(1.0)
                runs: dict[str, list[tuple[float, int | None, str]]] = {"old default": [], "nla default": []}
                for _ in range(args.repeats):  # interleaved, so a drift in the machine's load hits both
                    runs["old default"].append(run_job(html, old, args.extra))
                    runs["nla default"].append(run_job(html, None, args.extra))
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
            for name, rs in runs.items():
                row = {
                    "load": load,
                    "threads_rule": name,
                    "threads": sorted({t for _, t, _ in rs if t is not None}),
                    "busy_cores_before": None if busy is None else round(busy, 2),
                    "median_s": round(statistics.median(s for s, _, _ in rs), 1),
                    "runs_s": [round(s, 1) for s, _, _ in rs],
                    "generation_vs_estimate": [n for _, _, n in rs],
                }
                results.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n{'load':<6} {'threads':<22} {'median s':>9}  runs (busy cores measured before)")
    for r in results:
        label = f"{r['threads_rule']} ({','.join(map(str, r['threads']))})"
        print(f"{r['load']:<6} {label:<22} {r['median_s']:>9.1f}  {r['runs_s']} ({r['busy_cores_before']})")
    if args.json:
        args.json.write_text(json.dumps({"job": TEXT, "extra": args.extra, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
