"""``nla verbalize``: the AV's explanations of a training split, as teacher-format parquet.

    nla verbalize --av runs/rl/final/av --data runs/acts --split ar_sft --limit 2000 --out runs/av_text.parquet
    nla train ar --init runs/rl/final/ar --data runs/av_text.parquet --eval-data runs/teach/eval.parquet

Refitting the AR on what the AV actually writes is the offline form of RL's online AR updates.
"""

from __future__ import annotations

import argparse

from nla.common.config import config_from_args
from nla.verbalize import VerbalizeConfig, verbalize

NAME, CONFIG = "verbalize", VerbalizeConfig
HELP = "Write an AV's explanations of a split as teacher-format parquet."


def run(args: argparse.Namespace) -> int:
    verbalize(config_from_args(VerbalizeConfig, args))
    return 0
