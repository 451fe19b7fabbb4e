"""Benchmark ``NLA.explain``: batched generation vs one-at-a-time generation on the same positions.

The AV is an UNTRAINED copy of SmolLM2-135M-Instruct with the default injection scale and the AR is
``ActivationReconstructor.from_target`` at layer 20 (identity head), both saved to a temp dir and
loaded back with ``NLA.from_pretrained``. Their explanations are meaningless; only speed is measured.
Greedy decoding, so both runs generate the same answers (checked).

    python bench/explain.py                     # 16 positions, 32 new tokens, 1 thread
    python bench/explain.py --positions 32 --max-new-tokens 48 --threads 2
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

TEXT = (
    "The committee met on Tuesday to review the budget for the new library. After a long debate about "
    "the cost of books, staff and heating, the members agreed to postpone the vote until the spring, "
    "when the city will know how much money the state plans to send."
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--positions", type=int, default=16, help="Number of token positions to explain (the last N).")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the dev machine is shared).")
    ap.add_argument("--layer", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    from nla.explain.api import NLA
    from nla.explain.inputs import encode_input
    from nla.models.ar import ActivationReconstructor
    from nla.models.av import ActivationVerbalizer, default_injection_scale
    from nla.models.target import load_target

    target = load_target("smollm2-135m")
    enc = encode_input(target.tokenizer, TEXT)
    acts = target.hidden_at(torch.tensor([enc.input_ids]), None, args.layer)[0]  # (T, d)
    scale = default_injection_scale(acts[8:])  # skip the first tokens (outlier norms)
    with tempfile.TemporaryDirectory() as tmp:
        ActivationVerbalizer.from_target(target, injection_scale=scale, layer=args.layer).save_pretrained(
            Path(tmp) / "av"
        )
        ActivationReconstructor.from_target(target, args.layer).save_pretrained(Path(tmp) / "ar")
        nla = NLA.from_pretrained(Path(tmp) / "av", Path(tmp) / "ar", target=target)
    n_tok = len(enc.input_ids)
    positions = list(range(n_tok - args.positions, n_tok))
    gen = dict(max_new_tokens=args.max_new_tokens)

    nla.explain(TEXT, positions[:2], batch_size=2, max_new_tokens=4)  # warm-up
    t0 = time.perf_counter()
    batched = nla.explain(TEXT, positions, batch_size=args.batch_size, **gen)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = nla.explain(TEXT, positions, batch_size=1, **gen)
    t_single = time.perf_counter() - t0

    n_new = sum(len(target.tokenizer(r.raw, add_special_tokens=False).input_ids) for r in single)
    same = sum(a.raw == b.raw for a, b in zip(batched, single, strict=True))
    print(
        "NOTE: untrained AV (copy of SmolLM2) + identity-head AR at layer "
        f"{args.layer}: speed benchmark only, explanations are meaningless."
    )
    print(
        f"setup: SmolLM2-135M fp32 CPU, {torch.get_num_threads()} thread(s), injection_scale={scale:g}, "
        f"{len(positions)} positions, max_new_tokens={args.max_new_tokens}, greedy"
    )
    print(f"generated tokens (one-at-a-time run): {n_new} ({n_new / len(positions):.1f} per explanation)")
    print(
        f"batched (batch_size={args.batch_size}): {t_batched:7.2f} s  {len(positions) / t_batched:6.2f} explanations/s"
    )
    print(f"one at a time (batch_size=1): {t_single:7.2f} s  {len(positions) / t_single:6.2f} explanations/s")
    print(f"speed-up: {t_single / t_batched:.2f}x   identical greedy answers: {same}/{len(positions)}")
    print(
        f"mean round-trip cosine {sum(r.cosine for r in batched) / len(batched):+.3f} "
        f"(empty-explanation control {sum(r.control_cosine for r in batched) / len(batched):+.3f})"
    )


if __name__ == "__main__":
    main()
