"""``nla train ar``: AR-SFT on teacher explanations; prints the held-out FVE beside its controls.

    nla train ar --data ar_train.parquet --eval-data ar_eval.parquet --out-dir runs/ar [--lora] [...]

Re-running the same command with the same ``--out-dir`` resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import sys

from nla.cli import print_json
from nla.common.config import config_from_args
from nla.evaluate.roundtrip import format_eval
from nla.train.ar import ARTrainConfig, train_ar

NAME, CONFIG = "ar", ARTrainConfig
HELP = "Train the activation reconstructor (explanation -> activation) on teacher data."


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(ARTrainConfig, args)
    result = train_ar(cfg)
    summary = {
        "steps": result.steps,
        "skipped_nonfinite_steps": result.skipped_nonfinite,
        "final_loss": result.final_loss,
        "train_rows": result.extra.get("train_rows"),
        "train_skipped_rows": result.extra.get("train_skipped"),
        "eval_skipped_rows": result.extra.get("eval_skipped"),
        "eval": result.final_eval,
        "model_dir": str(result.out_dir / "final"),
    }
    if result.final_eval:
        sys.stdout.write(f"held-out: {format_eval(result.final_eval)}\n")
    print_json(summary)
    return 0
