"""``nla faithfulness``: how far can an NLA's explanations be trusted? Planted directions, topic recall,
perturbations, claims checked against the model, and the token-lookup control, in one report.

    nla faithfulness --quick                          # the shipped NLA, reduced run (about 2 minutes on a CPU)
    nla faithfulness --data runs/teach/eval.parquet --train-data runs/teach/ar_sft.parquet --out faithfulness/
    nla faithfulness --av runs/rl/final/av --ar runs/rl/final/ar --concepts my_concepts.yaml

Writes ``report.json`` and ``report.html`` into ``--out`` (default ``./faithfulness/``) and prints a summary.
Without ``--data`` the held-out-row sections (perturbations, next-token claims, quote grounding, token
lookup) are skipped. Decoding is greedy unless ``--best-of K``. A killed run resumes from ``--out/work/``.
See docs/faithfulness.md for what each number means and the rules of thumb of the checks.
"""

from __future__ import annotations

import argparse
import sys

from nla.common.config import config_from_args
from nla.faithfulness.report import summary_text
from nla.faithfulness.suite import FaithfulnessConfig, command_line, run_faithfulness

NAME, CONFIG = "faithfulness", FaithfulnessConfig
HELP = "Measure how far an NLA's explanations can be trusted (planted directions, recall, perturbations)."


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="Print the whole report as JSON instead of the summary.")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(FaithfulnessConfig, args)
    report = run_faithfulness(cfg, command=command_line(cfg))
    if args.json:
        from nla.cli import print_json
        from nla.faithfulness.report import jsonable

        print_json(jsonable(report))
    else:
        sys.stdout.write(summary_text(report) + f"\nreport: {cfg.out}/report.html and {cfg.out}/report.json\n")
    return 0
