"""``nla export``: AV/AR checkpoints as compact LoRA adapters, or as full checkpoints in the official layout.

    nla export --av runs/rl/final/av --ar runs/rl/final/ar --out nla-small --rank 16
    nla export --format official --out nla-official          # the shipped NLA, for the official code

``--format lora`` (default): each linear layer's fine-tuning delta becomes its best rank-r approximation
(SVD); norms are kept in full; embedding changes are dropped (reported). The export is lossy: score it with
``nla eval``. ``--format official``: merged full weights, an official sidecar, and config/tokenizer files
that transformers 4.5x and 5.x load alike (docs/interop.md). Without --av/--ar: the shipped NLA.
"""

from __future__ import annotations

import argparse
import sys

from tqdm.auto import tqdm

from nla.common.config import config_from_args
from nla.common.errors import NLAError
from nla.export import LORA_STEPS, ExportConfig, export_nla

NAME, CONFIG = "export", ExportConfig
HELP = "Export AV/AR checkpoints as LoRA adapters (SVD of the deltas) or as official full checkpoints."


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(ExportConfig, args)
    if not cfg.out:
        raise NLAError("--out is required")
    if cfg.format == "official":
        from nla.explain.api import resolve_nla_paths
        from nla.export_official import STEPS, export_official

        av, ar = resolve_nla_paths(cfg.av or None, cfg.ar or None)  # none given: the shipped NLA
        if ar is None:
            raise NLAError("--format official exports a pair: give --ar too")
        with tqdm(total=STEPS, desc="export official", unit="step", file=sys.stderr) as bar:
            size = export_official(av, ar, cfg.out, progress=bar)
        sys.stdout.write(
            f"wrote {cfg.out} ({size:.1f} MiB): av/ and ar/ as merged full checkpoints in the official layout\n"
        )
        return 0
    for name in ("av", "ar"):
        if not getattr(cfg, name):
            raise NLAError(f"--{name} is required")
    with tqdm(total=LORA_STEPS, desc="export lora", unit="step", file=sys.stderr) as bar:
        rep = export_nla(
            cfg.av, cfg.ar, cfg.out, rank=cfg.rank, dtype=cfg.dtype, keep_tokenizer=cfg.keep_tokenizer, progress=bar
        )
    sys.stdout.write(f"wrote {rep.out} ({rep.size_mib:.1f} MiB, rank {rep.rank})\n")
    for role in ("av", "ar"):
        dropped = ", ".join(f"{k} ({v:.2g})" for k, v in sorted(rep.dropped[role].items())) or "nothing"
        sys.stdout.write(
            f"  {role}: rank-{rep.rank} factors keep {rep.kept_energy[role]:.1%} of the linear "
            f"layers' delta energy; dropped: {dropped}\n"
        )
    return 0
