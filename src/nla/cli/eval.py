"""``nla eval``: the evaluation card of an NLA (stage ladder, controls, retrieval, format health).

    nla eval                      # the card of the NLA shipped with the package (measured when it was built)
    nla eval --model gemma3-270m  # the card of the NLA shipped for another embedded model
    nla eval --model gemma3-270m --data runs/g/teach/eval.parquet --train-data runs/g/teach/ar_sft.parquet

    nla eval --av runs/rl/final/av --ar runs/rl/final/ar --sft-av runs/av/final --sft-ar runs/ar/final \\
        --data runs/teach/eval.parquet --train-data runs/teach/ar_sft.parquet --out card.json

To evaluate, --data and at least one AR (--ar, --sft-ar or a --stage's pair) are required. The options, the
checkpoint folders, the data paths and --out are checked before any model loads; generation shows a progress bar.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nla.common.config import config_from_args
from nla.common.errors import NLAError
from nla.evaluate.card import (
    EvalConfig,
    evaluation_card,
    format_card,
    parse_stages,
    read_card,
    require_inputs,
    shipped_card,
    split_earlier,
)

NAME, CONFIG = "eval", EvalConfig
HELP = "Evaluate AV/AR checkpoints on held-out activations: FVE ladder beside its controls."


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="Print the whole card as JSON.")


def check(cfg: EvalConfig) -> int:
    """Fail before the work: options, paths and checkpoints. Returns the number of answers to generate."""
    from nla.common.meta import MODEL_SIDECAR
    from nla.common.paths import check_writable_file

    for name in ("rows", "max_new_tokens", "batch_size", "best_of"):
        if getattr(cfg, name) < 1:
            raise NLAError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if not cfg.temperature > 0:
        raise NLAError(f"--temperature must be > 0, got {cfg.temperature}")
    require_inputs(cfg)
    if cfg.out:
        check_writable_file(cfg.out, "--out")
    for flag, path in (("--data", cfg.data), ("--train-data", cfg.train_data), ("--compute", cfg.compute)):
        if path and not Path(path).exists():
            raise NLAError(f"{flag} {path}: no such file or folder")
    if cfg.earlier:
        read_card(split_earlier(cfg.earlier)[1])
    stages = parse_stages(cfg.stage)
    dirs = [("--av", cfg.av), ("--ar", cfg.ar), ("--sft-av", cfg.sft_av), ("--sft-ar", cfg.sft_ar)]
    dirs += [(f"--stage {name}", d) for name, av, ar in stages for d in (av, ar)]
    for flag, path in dirs:
        if path and not (Path(path) / MODEL_SIDECAR).is_file():
            raise NLAError(f"{flag} {path} is not an NLA checkpoint folder (no {MODEL_SIDECAR} in it)")
    if cfg.best_of > 1 and not ((cfg.av and cfg.ar) or stages):
        raise NLAError("--best-of needs an AV and AR pair to decode with (--av/--ar or a --stage)")
    round_trips = bool(cfg.sft_av and cfg.sft_ar) + bool(cfg.av and cfg.ar) + len(stages)
    return cfg.rows * (round_trips + (cfg.best_of if cfg.best_of > 1 else 0))


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(EvalConfig, args)
    checkpoints = cfg.av or cfg.ar or cfg.sft_av or cfg.sft_ar or cfg.stage
    if cfg.model and checkpoints:
        raise NLAError("--model picks the NLA shipped for that model: give it or checkpoints (--av, ...), not both")
    if cfg.model and cfg.data:  # evaluate the NLA shipped for --model on --data
        from nla.explain.api import resolve_nla_paths
        from nla.models.target import shipped_model

        cfg.av, ar = resolve_nla_paths(None, None, shipped_model(cfg.model))
        cfg.ar = ar or ""
    if not cfg.data and not checkpoints:
        card = shipped_card(cfg.model)
    else:
        from nla.explain.progress import progress_bar

        total = check(cfg)
        with progress_bar(total, desc="eval: generate") as bar:
            card = evaluation_card(cfg)
            bar.total = bar.n  # fewer held-out rows than --rows: the bar still ends at 100%
    sys.stdout.write((json.dumps(card, indent=2, ensure_ascii=False) if args.json else format_card(card)) + "\n")
    return 0
