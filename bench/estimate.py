"""How close `nla explain`'s time estimate comes to the time taken, on the README job and a 30-token text.

Each run is a fresh process (``python -m nla.cli -v explain TEXT``, this checkout's ``src`` first on the path),
best-of-4 as the library's default. The estimate (printed before generating, from the calibration of
``nla.explain.progress``) and the time generation and scoring then took come from the run's debug log. Prints
every run, each text's median error, and the load average (the estimate follows the machine's load at
calibration time; a load that changes during the run moves the time taken, not the estimate).

    python bench/estimate.py                 # 3 runs of each text
    python bench/estimate.py --repeats 5 --json ~/nla-runs/estimate.json
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
from pathlib import Path

TEXTS = {
    "README job": "The Eiffel Tower is in Paris.",
    "30-token text": "After the storm passed, the fishermen mended their torn nets on the harbour wall while their "
    "children counted the seagulls circling above the grey water today.",
}
LINE = re.compile(r"generation and scoring took ([\d.]+) s; estimate ([\d.]+) s")


def run_once(text: str, out: Path, extra: list[str]) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    cmd = [sys.executable, "-m", "nla.cli", "-v", "explain", text, "--html", str(out / "explain.html"), *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the job failed ({done.returncode}):\n{done.stderr[-2000:]}")
    found = LINE.search(done.stderr)
    if found is None:
        raise SystemExit("no estimate line in the debug log (was the run too short to calibrate?)")
    return float(found.group(1)), float(found.group(2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="write every run here")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="more options of nla explain (after --)")
    args = ap.parse_args()
    extra = [a for a in args.extra if a != "--"]
    from nla.models.target import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for name, text in TEXTS.items():  # the texts take turns, so a drift in load hits both
                took, est = run_once(text, Path(tmp), extra)
                load = os.getloadavg()[0]
                rows.append({"text": name, "repeat": rep, "took_s": took, "estimate_s": est, "load1": load})
                print(f"{name:14s} run {rep}: took {took:6.1f} s, estimated {est:6.1f} s "
                      f"({100 * (est / took - 1):+4.0f}%), load average {load:.1f}", flush=True)  # fmt: skip
    print()
    for name, text in TEXTS.items():
        errs = [100 * (r["estimate_s"] / r["took_s"] - 1) for r in rows if r["text"] == name]
        n_tok = len(tok(text, add_special_tokens=False)["input_ids"])
        print(f"{name} ({n_tok} tokens): median error {statistics.median(errs):+.0f}%, "
              f"worst {max(errs, key=abs):+.0f}% over {len(errs)} runs")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
