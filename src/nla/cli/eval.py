"""``nla eval``: the evaluation card of an NLA (stage ladder, controls, retrieval, format health).

    nla eval                      # the card of the NLA shipped with the package (measured when it was built)

    nla eval --av runs/rl/final/av --ar runs/rl/final/ar --sft-av runs/av/final --sft-ar runs/ar/final \\
        --data runs/teach/eval.parquet --train-data runs/teach/ar_sft.parquet --out card.json
"""

from __future__ import annotations

import argparse
import json
import sys

from nla.common.config import config_from_args
from nla.evaluate.card import EvalConfig, evaluation_card, format_card, shipped_card

NAME, CONFIG = "eval", EvalConfig
HELP = "Evaluate AV/AR checkpoints on held-out activations: FVE ladder beside its controls."


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="Print the whole card as JSON.")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(EvalConfig, args)
    if not cfg.data and not cfg.av and not cfg.ar and not cfg.sft_av and not cfg.sft_ar:
        card = shipped_card()
    else:
        card = evaluation_card(cfg)
    sys.stdout.write((json.dumps(card, indent=2, ensure_ascii=False) if args.json else format_card(card)) + "\n")
    return 0
