"""``nla teach``: write warm-start explanations of an activation split with a teacher.

    nla teach --data runs/acts --split ar_sft --teacher offline --out runs/ar_sft.teach.parquet
    ANTHROPIC_API_KEY=... nla teach --data runs/acts --teacher anthropic --model claude-haiku-4-5 --out t.parquet
    nla teach --data runs/acts --teacher openai --base-url http://localhost:8000/v1 --model Qwen/Qwen2.5-7B-Instruct \\
        --concurrency 32 --out t.parquet
"""

from __future__ import annotations

import argparse
import json
import sys

from nla.common.config import add_config_args, config_from_args
from nla.teach.run import TeachConfig, teach


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "teach",
        help="Explain an activation split with a teacher (offline, hf, anthropic, openai): warm-start data.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p, TeachConfig)
    p.set_defaults(func=run)


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
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0
