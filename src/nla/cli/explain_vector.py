"""``nla explain-vector``: explain arbitrary directions (a neuron's output weights, an SAE feature, a
steering vector) with a trained NLA.

    nla explain-vector feature.npy --av runs/nla/av --ar runs/nla/ar
    nla explain-vector saes.safetensors --key W_dec --jsonl out.jsonl --num-samples 4
    nla explain-vector directions.npy --html directions.html        # one row per vector, hover for details

The file holds a 1-D (d,) or 2-D (N, d) array: ``.npy`` (read with ``allow_pickle=False``) or
``.safetensors`` (``--key`` picks the tensor when there are several). Only directions matter: the AV
rescales every vector to its injection scale. The vectors are checked against the AV sidecar's
``d_model`` before any model loads, and only the AV and AR load: the target model is not needed.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from nla.cli.explain import NLAOptions, check_checkpoints, check_outputs, generate, load_nla, write_outputs
from nla.common.config import add_config_args, config_from_args, option
from nla.common.errors import NLAError


@dataclass
class ExplainVectorConfig(NLAOptions):
    html: str | None = option(None, "Write a self-contained HTML report (one entry per vector) to this file.")


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
    from nla.explain.inputs import as_vectors, load_vector_file

    cfg = config_from_args(ExplainVectorConfig, args)
    check_outputs({"--jsonl": cfg.jsonl, "--html": cfg.html}, [args.file])
    array = load_vector_file(args.file, args.key)  # before loading models: file errors come fast
    _, _, av_meta = check_checkpoints(cfg)
    try:
        d_model = int(av_meta["d_model"])
    except (KeyError, TypeError, ValueError) as e:
        raise NLAError("the AV sidecar has no valid d_model") from e
    vectors = as_vectors(array, d_model)  # (N, d): shape, NaN and zero rows checked against the sidecar
    nla = load_nla(cfg, with_target=False)
    records, timing = generate(
        nla, cfg, int(vectors.shape[0]), "vectors", lambda: nla.explain_vectors(vectors, **cfg.gen_kwargs())
    )
    write_outputs(cfg, nla, records, None, f"NLA explanations: {args.file.name}", extra_notes=[timing])
    return 0
