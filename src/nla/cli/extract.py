"""``nla extract``: activations of a target model at layer L into a split parquet dataset.

    nla extract --corpus default --out data/acts                 # embedded SmolLM2, layer 20
    nla extract --model Qwen/Qwen2.5-0.5B --layer 16 --corpus docs.jsonl --out acts
    accelerate launch --multi_gpu --num_processes 2 -m nla.cli extract --out acts --device cpu  # data parallel
    torchrun --nproc_per_node 2 -m nla.cli extract --out acts                                  # same

On CPU use --multi_gpu (torchrun + gloo): `accelerate launch --cpu` starts a single process unless
given an mpirun hostfile.

Killed runs resume: run the same command again.
"""

from __future__ import annotations

import argparse

from nla.cli import print_json
from nla.common.config import config_from_args
from nla.data.extract import ExtractConfig, extract

NAME, CONFIG = "extract", ExtractConfig
HELP = "Extract layer-L activations at N positions per document into av_sft/ar_sft/rl/eval parquet splits."


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(ExtractConfig, args)
    res = extract(cfg)
    summary = {
        "out": str(res.out),
        "rows": res.n_rows,
        "rows_per_split": res.rows_per_split,
        "docs": res.n_docs,
        "used_docs": res.n_used_docs,
        "skipped_short": res.n_skipped_short,
        "tokens_forwarded": res.tokens,
        "tokens_per_s": round(res.tokens_per_s, 1),
        "seconds": round(res.seconds, 2),
    }
    print_json(summary, indent=None, main_only=True)
    return 0
