"""``nla train av``: supervised fine-tuning of the activation verbalizer on teacher explanations."""

from __future__ import annotations

import argparse
import json
import sys

from nla.common.config import add_config_args, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    from nla.train.av import AVTrainConfig

    p = sub.add_parser(
        "av",
        help="AV-SFT: teach a copy of the target to verbalise injected vectors (reports the real-vs-shuffled NLL gap).",
        description="Fine-tune the activation verbalizer on teacher parquet (activation_vector + response). "
        "Held-out evaluation reports the NLL with real and with shuffled vectors; their gap is the signal.",
    )
    add_config_args(p, AVTrainConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nla.train.av import AVTrainConfig, train_av

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
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0
