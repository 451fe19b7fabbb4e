"""How often an explanation "beats empty" (nla.explain.trust) when it is the token's own vs another token's.

The verdict of ``nla explain`` compares each explanation's round-trip fve with the fve of an EMPTY
explanation of the same token, and says "beats empty" from a margin of FVE_MARGIN. This prints, for the
shipped NLA on a few varied texts (greedy explanations, every token of each text but the first), the
share of tokens that pass at several margins when the explanation is the token's own (it should pass
often) and when it is the explanation of a token from ANOTHER text (a shuffle; it should rarely pass).

    python bench/trust_margin.py                  # 1 thread, about 5 min on a busy 2-core machine
    python bench/trust_margin.py --threads 2 --max-new-tokens 100
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

TEXTS = [
    "The Eiffel Tower is in Paris, and every summer millions of tourists queue to climb it.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "My grandmother baked bread every Sunday morning before church, and the kitchen smelled of yeast.",
    "Q: What is the capital of Japan?\nA: The capital of Japan is Tokyo.",
    "In 1969, Apollo 11 landed on the Moon and Neil Armstrong took the first steps on its surface.",
    "Add 250 grams of flour, two eggs and a pinch of salt, then stir until the dough is smooth.",
    "The stock market fell sharply on Monday after the central bank raised interest rates again.",
    "She opened the letter slowly, afraid of what it might say about her brother.",
]
MARGINS = (0.0, 0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.40, 0.50)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shuffles", type=int, default=5, help="Shuffled pairings per token (other texts).")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from nla.core.metrics import fve_nrm, mse_nrm
    from nla.core.text import text_for_ar
    from nla.explain.api import NLA
    from nla.explain.trust import control_fve

    t0 = time.perf_counter()
    nla = NLA.from_pretrained()
    b = nla.baseline
    rows = []  # (text index, vector, explanation raw, control fve)
    for ti, text in enumerate(TEXTS):
        enc, picked = nla.select(text, "text")
        picked = [p for p in picked if p > 0]  # the first token (attention sink) is marked, not judged
        vecs = nla.activations(enc.input_ids)[picked]  # (P, d)
        recs = nla.explain(text, picked, best_of=1, max_new_tokens=args.max_new_tokens)
        for v, r in zip(vecs, recs, strict=True):
            rows.append((ti, v, r.raw, control_fve(r.control_cosine, b), r.fve))
    vectors = torch.stack([r[1] for r in rows])  # (N, d)
    rng = random.Random(args.seed)
    pred = nla.ar.predict([text_for_ar(r[2]) for r in rows]).float()  # (N, d): each token's own explanation
    pairs = []  # (token row, row of a token from another text whose explanation is scored against it)
    for i, (ti, *_) in enumerate(rows):
        choices = [j for j, r in enumerate(rows) if r[0] != ti]
        pairs += [(i, j) for j in rng.sample(choices, args.shuffles)]
    mse = mse_nrm(pred[[j for _, j in pairs]], vectors[[i for i, _ in pairs]])  # (N * shuffles,)
    shuffled = [fve_nrm(float(m), b) for m in mse]
    own_gap = [r[4] - r[3] for r in rows]
    shuf_gap = [s - rows[i][3] for s, (i, _) in zip(shuffled, pairs, strict=True)]
    n, ns = len(rows), len(pairs)
    out = {
        "tokens": n,
        "baseline": b,
        "mean_fve_own": sum(r[4] for r in rows) / n,
        "mean_fve_shuffled": sum(shuffled) / ns,
        "shuffled_pairs": ns,
        "mean_control_fve": sum(r[3] for r in rows) / n,
        "pass_rate": {
            f"{m:.2f}": {
                "own": round(sum(g >= m for g in own_gap) / n, 3),
                "shuffled": round(sum(g >= m for g in shuf_gap) / ns, 3),
            }
            for m in MARGINS
        },
        "seconds": round(time.perf_counter() - t0, 1),
        "threads": args.threads,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
