"""Best-of-K decoding: how held-out fve grows with K, and whether the gain survives a second reader.

For each held-out vector the AV writes its greedy answer and K-1 samples (``nla.evaluate.rerank.candidates``);
every candidate is read by the chooser AR and by a second AR. For k = 1..K the script prints the fve of
the candidate the chooser keeps among the first k, scored by both readers, and the same with the second
AR choosing. A gain the other reader also sees is information in the text, not a quirk of the chooser.

    python bench/best_of.py --av src/nla/data/default_nla/av --ar src/nla/data/default_nla/ar \\
        --reader runs/cmp/ar2/final --data runs/cmp/teach/eval.parquet --train-data runs/cmp/teach/ar_sft.parquet \\
        --rows 128 --k 4 --temperature 0.7
"""

from __future__ import annotations

import argparse
import time

import torch

from nla.core import metrics
from nla.core.text import text_for_ar
from nla.data.activations import load_vectors
from nla.evaluate.rerank import candidates
from nla.evaluate.roundtrip import Baseline
from nla.models.ar import ActivationReconstructor
from nla.models.av import ActivationVerbalizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--av", required=True)
    ap.add_argument("--ar", required=True, help="the chooser (the AR shipped with the AV)")
    ap.add_argument("--reader", required=True, help="a second AR that only reads")
    ap.add_argument("--data", required=True, help="held-out teacher parquet or extract dir")
    ap.add_argument("--train-data", required=True, help="training parquet whose mean gives the baseline B")
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    held = load_vectors(args.data, "eval")
    vec = held.vectors[: args.rows].float()
    base = Baseline.from_train(load_vectors(args.train_data, "ar_sft").vectors).value
    av = ActivationVerbalizer.from_pretrained(args.av)
    readers = {
        "chooser": ActivationReconstructor.from_pretrained(args.ar),
        "reader": ActivationReconstructor.from_pretrained(args.reader),
    }
    t0 = time.perf_counter()
    cands = candidates(
        av, vec, args.k, temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed
    )
    gen_s = time.perf_counter() - t0
    n, k = vec.shape[0], args.k
    texts = [text_for_ar(t) for t in cands.texts]
    gold = vec.repeat_interleave(k, dim=0)
    mse = {name: metrics.mse_nrm(ar.predict(texts).float(), gold).view(n, k) for name, ar in readers.items()}
    print(f"{n} rows, {n * k} generations in {gen_s:.0f} s, B = {base:.4f}, temperature {args.temperature}")
    print(f"{'chosen by':<8} {'k':>2} {'fve (chooser)':>14} {'fve (reader)':>13}")
    for by in readers:
        for kk in range(1, k + 1):
            pick = mse[by][:, :kk].argmin(dim=1, keepdim=True)  # (N, 1)
            fves = [metrics.fve_nrm(mse[r].gather(1, pick)[:, 0], base) for r in readers]
            print(f"{by:<8} {kk:>2} {fves[0]:>+14.3f} {fves[1]:>+13.3f}")
    for r in readers if k > 1 else ():
        print(f"mean over the samples alone, {r}: {metrics.fve_nrm(mse[r][:, 1:].mean(dim=1), base):+.3f}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
