"""``nla export``: turn AV/AR checkpoints into compact LoRA adapters on their base model (adapters are copied).

    nla export --av runs/rl/final/av --ar runs/rl/final/ar --out nla-small --rank 16

Each linear layer's fine-tuning delta becomes its best rank-r approximation (SVD); norms are kept in
full; embedding changes are dropped (reported). The export is lossy: score it with ``nla eval``.
"""

from __future__ import annotations

import argparse
import sys

from nla.common.config import config_from_args
from nla.common.errors import NLAError
from nla.export import ExportConfig, export_nla

NAME, CONFIG = "export", ExportConfig
HELP = "Export full AV/AR checkpoints as compact LoRA adapters (SVD of the deltas)."


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(ExportConfig, args)
    for name in ("av", "ar", "out"):
        if not getattr(cfg, name):
            raise NLAError(f"--{name} is required")
    rep = export_nla(cfg.av, cfg.ar, cfg.out, rank=cfg.rank, dtype=cfg.dtype, keep_tokenizer=cfg.keep_tokenizer)
    sys.stdout.write(f"wrote {rep.out} ({rep.size_mib:.1f} MiB, rank {rep.rank})\n")
    for role in ("av", "ar"):
        dropped = ", ".join(f"{k} ({v:.2g})" for k, v in sorted(rep.dropped[role].items())) or "nothing"
        sys.stdout.write(
            f"  {role}: rank-{rep.rank} factors keep {rep.kept_energy[role]:.1%} of the linear "
            f"layers' delta energy; dropped: {dropped}\n"
        )
    return 0
