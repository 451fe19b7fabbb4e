"""``nla info``: what a target model looks like to nla (d_model, layers, default layer, chat template)."""

from __future__ import annotations

import argparse
import json
import sys

from nla.models.target import DEFAULT_TARGET, load_target


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="Show d_model, layer count, default layer and tokenizer facts of a target model.")
    p.add_argument(
        "--model", default=DEFAULT_TARGET, help="HF id, local directory, or embedded name (default: %(default)s)."
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    t = load_target(args.model)
    facts = {
        "model": t.name,
        "path": t.path,
        "architecture": type(t.model).__name__,
        "d_model": t.d_model,
        "n_layers": t.n_layers,
        "default_layer": t.default_layer,
        "embed_scale": t.embed_scale,
        "vocab_size": len(t.tokenizer),
        "has_chat_template": t.chat_template is not None,
    }
    sys.stdout.write(json.dumps(facts, indent=2) + "\n")
    return 0
