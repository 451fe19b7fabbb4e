"""The learning curve of a joint-RL run, from its ``metrics.jsonl``: block means of the per-step records.

One rollout step holds only ``prompts_per_step`` activations (4 in the default recipe), so a single step's
reward or fve is noise; means over blocks of steps show whether the run moves. Columns: rollout fve and
reward, the contrastive and length reward terms, mean explanation length in tokens, KL to the reference
AV, the AR's loss on the step's rollouts, and seconds per step. The final held-out evaluation of the run
(``nla train rl`` writes it as the last record) is printed when it is there.

    python bench/rl_curve.py runs/nla/round4/rl_long --block 25
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from nla.train.tracking import METRICS, read_metrics

COLUMNS = {
    "fve": "fve",
    "reward": "reward_mean",
    "contrast": "reward/contrastive",
    "length": "reward/length",
    "len": "len_mean",
    "kl": "kl",
    "ar_loss": "ar_loss",
    "s/step": "time_step_s",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="An `nla train rl --out-dir` folder.")
    ap.add_argument("--block", type=int, default=25, help="Steps per row.")
    args = ap.parse_args()
    records = list(read_metrics(args.run))
    steps = [r for r in records if not r.get("final")]
    finals = [r for r in records if r.get("final")]
    if not steps:
        raise SystemExit(f"{Path(args.run) / METRICS}: no step records")
    print(f"{'steps':>9} " + " ".join(f"{name:>9}" for name in COLUMNS))
    for i in range(0, len(steps), args.block):
        block = steps[i : i + args.block]
        cells = []
        for key in COLUMNS.values():
            values = [r[key] for r in block if isinstance(r.get(key), int | float)]
            cells.append(f"{statistics.fmean(values):>9.4f}" if values else f"{'-':>9}")
        print(f"{block[0]['step']:>4}-{block[-1]['step']:<4} " + " ".join(cells))
    last = steps[-1]
    print(f"{len(steps)} steps, {last.get('elapsed', float('nan')):.0f} s of training")
    for rec in finals:
        held = {k.removeprefix("eval/"): v for k, v in rec.items() if k.startswith("eval/")}
        shown = ("fve_nrm", "frozen_ar/fve_nrm", "fve_shuffled", "tag_failure_rate", "n")
        print(
            f"final held-out eval at step {rec['step']}: " + ", ".join(f"{k} {held[k]:.4f}" for k in shown if k in held)
        )


if __name__ == "__main__":
    main()
