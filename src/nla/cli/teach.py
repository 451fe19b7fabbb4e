"""``nla teach``: write warm-start explanations of an activation split with a teacher.

    nla teach --data runs/acts --split ar_sft --teacher offline --out runs/ar_sft.teach.parquet
    ANTHROPIC_API_KEY=... nla teach --data runs/acts --teacher anthropic --model claude-haiku-4-5 --out t.parquet
    nla teach --data runs/acts --teacher openai --base-url http://localhost:8000/v1 --model Qwen/Qwen2.5-7B-Instruct \\
        --concurrency 32 --out t.parquet
"""

from __future__ import annotations

import argparse

from nla.cli import print_json
from nla.common.config import config_from_args
from nla.teach.run import TeachConfig, teach

NAME, CONFIG = "teach", TeachConfig
HELP = "Explain an activation split with a teacher (offline, hf, anthropic, openai): warm-start data."


def run(args: argparse.Namespace) -> int:
    res = teach(config_from_args(TeachConfig, args))
    summary = {
        "out": str(res.out),
        "rows": res.n_rows,
        "kept": res.n_kept,
        "drops": res.drops,
        "asked": res.n_asked,
        "cached": res.n_cached,
        "resumed": res.n_resumed,
        "seconds": round(res.seconds, 1),
    }
    print_json(summary, indent=None)
    return 0
