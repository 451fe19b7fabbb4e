"""``nla train av``: supervised fine-tuning of the activation verbalizer on teacher explanations.

    nla train av --data av_sft.parquet --eval-data eval.parquet --out-dir runs/av [--lora] [...]

Fine-tunes on teacher parquet (activation_vector + response). Held-out evaluation reports the NLL with
real and with shuffled vectors; their gap is the signal. Re-running with the same ``--out-dir`` resumes.
"""

from __future__ import annotations

import argparse

from nla.cli import print_json
from nla.common.config import config_from_args
from nla.train.av import AVTrainConfig, train_av

NAME, CONFIG = "av", AVTrainConfig
HELP = "AV-SFT: teach a copy of the target to verbalise injected vectors (reports the real-vs-shuffled NLL gap)."


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(AVTrainConfig, args)
    _, result = train_av(cfg)
    summary = {
        "out_dir": str(result.out_dir),
        "av": str(result.out_dir / "final"),
        "steps": result.steps,
        "final_loss": result.final_loss,
        "skipped_nonfinite_steps": result.skipped_nonfinite,
        "initial_eval": result.extra.get("initial_eval", {}),
        "final_eval": result.final_eval,
        "injection_scale": result.extra.get("injection_scale"),
        "layer": result.extra.get("layer"),
        "skipped_rows": result.extra.get("skipped_rows", {}),
    }
    print_json(summary)
    return 0
