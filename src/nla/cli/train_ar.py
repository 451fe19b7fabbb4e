"""``nla train ar``: AR-SFT on teacher explanations; prints the held-out FVE beside its controls.

    nla train ar --data ar_train.parquet --eval-data ar_eval.parquet --out-dir runs/ar [--lora] [...]

Re-running the same command with the same ``--out-dir`` resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys

from nla.common.config import add_config_args, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    from nla.train.ar import ARTrainConfig

    p = sub.add_parser(
        "ar",
        help="Train the activation reconstructor (explanation -> activation) on teacher data.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p, ARTrainConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nla.evaluate.roundtrip import format_eval
    from nla.train.ar import ARTrainConfig, train_ar

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
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0
