"""``nla explain-vector``: explain arbitrary directions (a neuron's output weights, an SAE feature, a
steering vector) with a trained NLA.

    nla explain-vector feature.npy --av runs/nla/av --ar runs/nla/ar
    nla explain-vector saes.safetensors --key W_dec --jsonl out.jsonl --num-samples 4

The file holds a 1-D (d,) or 2-D (N, d) array: ``.npy`` (read with ``allow_pickle=False``) or
``.safetensors`` (``--key`` picks the tensor when there are several). Only directions matter: the AV
rescales every vector to its injection scale.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from nla.cli.explain import NLAOptions, load_nla, write_outputs
from nla.common.config import add_config_args, config_from_args


@dataclass
class ExplainVectorConfig(NLAOptions):
    pass


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain-vector",
        help="Explain arbitrary directions from a .npy or .safetensors file.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", type=Path, help="A .npy or .safetensors file with a (d,) or (N, d) array.")
    p.add_argument("--key", default=None, help="Tensor name inside a .safetensors file.")
    add_config_args(p, ExplainVectorConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nla.explain.inputs import load_vector_file

    cfg = config_from_args(ExplainVectorConfig, args)
    array = load_vector_file(args.file, args.key)  # before loading models: file errors come fast
    nla = load_nla(cfg)
    records = nla.explain_vectors(array, **cfg.gen_kwargs())
    write_outputs(cfg, nla, records, None, f"NLA explanations: {args.file.name}")
    return 0
