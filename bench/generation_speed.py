"""Greedy generation speed of target models on one thread, in one process (so the numbers compare).

For each model: the load time, then ``generate`` of exactly ``--new`` tokens (``min_new_tokens`` =
``max_new_tokens``) after a 4-token warm-up, at batch 1 and batch 8, reported as tokens per wall second and
per CPU-second of the thread (less affected by other jobs on a shared machine).

    python bench/generation_speed.py --models smollm2-135m,gemma3-270m
"""

from __future__ import annotations

import argparse
import time

import torch

from nla.models.target import load_target

PROMPT = "Here is a hidden concept taken from inside a language model. Describe it as 2-3 short features"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m")
    ap.add_argument("--new", type=int, default=64, help="new tokens per sequence")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--dtypes", default="float32", help="comma-separated torch dtypes, e.g. float32,bfloat16")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name, dtype in ((m, d) for m in args.models.split(",") for d in args.dtypes.split(",")):
        t0 = time.perf_counter()
        t = load_target(name, dtype=getattr(torch, dtype))
        load = time.perf_counter() - t0
        tok = t.tokenizer
        n_prompt = len(tok(PROMPT)["input_ids"])
        print(f"{name} ({dtype}): loaded in {load:.1f} s wall; prompt {n_prompt} tokens", flush=True)
        for bs in (int(b) for b in args.batches.split(",")):
            ids = tok([PROMPT] * bs, return_tensors="pt")
            common = dict(do_sample=False, pad_token_id=tok.pad_token_id)
            t.model.generate(**ids, max_new_tokens=4, min_new_tokens=4, **common)  # warm-up
            t1, c1 = time.perf_counter(), time.process_time()
            out = t.model.generate(**ids, max_new_tokens=args.new, min_new_tokens=args.new, **common)
            wall, cpu = time.perf_counter() - t1, time.process_time() - c1
            n = (out.shape[1] - ids.input_ids.shape[1]) * bs
            print(
                f"  batch {bs}: {n} new tokens in {wall:.2f} s wall / {cpu:.2f} s CPU = {n / wall:.1f} tok/s wall, "
                f"{n / cpu:.1f} tok/s per CPU-second",
                flush=True,
            )


if __name__ == "__main__":
    main()
