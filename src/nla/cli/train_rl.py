"""``nla train rl``: joint GRPO of the AV against a co-trained AR (rewards from the current AR).

    nla train rl --av runs/av/final --ar runs/ar/final --data runs/acts --eval-data runs/acts --steps 200
    accelerate launch --multi_gpu --num_processes 8 -m nla.cli train rl --config rl.yaml     # DDP

Re-running the same command with the same ``--out-dir`` resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse

from nla.cli import print_json
from nla.common.config import config_from_args
from nla.train.rl.trainer import RLConfig, train_rl

NAME, CONFIG = "rl", RLConfig
HELP = "Joint RL: GRPO on the AV with rewards from the current AR, which keeps training on the rollouts."


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(RLConfig, args)
    res = train_rl(cfg)
    summary = {
        "out_dir": str(res.out_dir),
        "av": str(res.out_dir / "final" / "av"),
        "ar": str(res.out_dir / "final" / "ar"),
        "steps": res.steps,
        "resumed_from": res.resumed_from,
        "last_step": res.last.record() if res.last is not None else None,
        "final_eval": res.final_eval,
        "seconds": round(res.elapsed_s, 1),
    }
    print_json(summary, indent=2, main_only=True)
    return 0
