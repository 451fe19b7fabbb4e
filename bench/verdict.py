"""Build the token-lookup table of the verdict, and measure the verdict's precision and kept share.

``build``: from the TRAINING splits (av_sft, ar_sft, rl) of an ``nla extract`` directory, the mean
normalised activation of each final token seen at least ``--min-count`` times (the ``--top`` most
frequent), and the overall mean, saved as ``token_lookup.safetensors`` (fp16 means) for
:class:`nla.explain.trust.TokenLookup`. The final token id comes from each row's context text, as the
card's token lookup does (:func:`nla.evaluate.lookup.last_token_ids`).

``calibrate``: on ``--rows`` held-out rows (the ``eval`` split: documents the table never saw), the
shipped NLA explains each vector (greedy), and each row gets:

- ``fve`` of the explanation, ``control_fve`` (empty explanation), ``lookup_fve`` (the table);
- **correct** (the stated definition): the AR's reconstruction is closer (cosine) to its own vector than
  to each of the ``--k``-1 held-out vectors of OTHER documents most similar to that vector (hard
  distractors); ``correct_random`` uses ``--k``-1 random ones instead.

It prints, for the old verdict (beats the empty explanation by 0.30 fve) and the new one (fve > 0 and
fve >= lookup + margin, at several margins), the share of rows kept, the precision (correct among kept)
and the recall (kept among correct), and the number of kept rows with fve < 0.

    python bench/verdict.py build --data ~/nla-runs/acts --out src/nla/resources/default_nla/token_lookup.safetensors
    python bench/verdict.py calibrate --data ~/nla-runs/acts --rows 96 --out verdict.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

MARGINS = (0.0, 0.05, 0.10, 0.20)


def build(args: argparse.Namespace) -> None:
    from nla.explain.trust import build_token_lookup

    table = build_token_lookup(args.data, args.model, min_count=args.min_count, top=args.top, layer=args.layer)
    table.save(args.out)
    print(json.dumps({**table.meta, "bytes": Path(args.out).stat().st_size}, indent=2))


def _rates(kept: list[bool], correct: list[bool], fves: list[float]) -> dict[str, float]:
    n_kept = sum(kept)
    hits = sum(k and c for k, c in zip(kept, correct, strict=True))
    return {
        "kept_share": n_kept / len(kept),
        "precision": hits / n_kept if n_kept else float("nan"),
        "recall": hits / max(1, sum(correct)),
        "kept_with_negative_fve": sum(k and f < 0 for k, f in zip(kept, fves, strict=True)),
    }


def calibrate(args: argparse.Namespace) -> None:
    from nla.data.activations import load_vectors
    from nla.evaluate.lookup import last_token_ids
    from nla.explain.api import NLA
    from nla.explain.trust import FVE_MARGIN, TokenLookup, lookup_scores

    t0 = time.perf_counter()
    held = load_vectors(args.data, "eval")
    rng = random.Random(args.seed)
    order = list(range(held.vectors.shape[0]))
    rng.shuffle(order)
    pick = sorted(order[: args.rows])
    vectors = held.vectors[pick].float()  # (N, d)
    docs = [held.doc_ids[i] for i in pick]
    nla = NLA.from_pretrained(with_target=False)
    table = TokenLookup.load(args.table) if args.table else nla.lookup
    tok = nla.av.tokenizer
    token_ids = [t[-1] for t in last_token_ids(tok, [(held.contexts or [])[i] for i in pick], k=1)]
    records = nla.explain_vectors(vectors, best_of=1, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    seconds = time.perf_counter() - t0
    lookup_fve, _ = lookup_scores(table, vectors, token_ids, nla.baseline)
    from nla.core.text import text_for_ar

    recon = nla.ar.predict([text_for_ar(r.raw) for r in records], batch_size=args.batch_size).float()  # (N, d)
    unit_v = torch.nn.functional.normalize(vectors, dim=-1)
    unit_r = torch.nn.functional.normalize(recon, dim=-1)
    sim_vv = unit_v @ unit_v.T  # (N, N)
    sim_rv = unit_r @ unit_v.T  # (N, N): reconstruction i vs vector j
    same_doc = torch.tensor([[a == b for b in docs] for a in docs])
    correct, correct_random = [], []
    for i in range(len(records)):
        others = [j for j in range(len(records)) if not same_doc[i, j]]
        hard = sorted(others, key=lambda j: -float(sim_vv[i, j]))[: args.k - 1]
        rand = rng.sample(others, min(args.k - 1, len(others)))
        correct.append(all(sim_rv[i, i] > sim_rv[i, j] for j in hard))
        correct_random.append(all(sim_rv[i, i] > sim_rv[i, j] for j in rand))
    fves = [float(r.fve) for r in records]
    ctrl = [float(r.control_fve) for r in records]
    out: dict = {
        "rows": len(records),
        "documents": len(set(docs)),
        "k": args.k,
        "generation_seconds": round(seconds, 1),
        "table": {**table.meta, "held_out_rows_with_their_token_in_table": sum(t in table.row_of for t in token_ids)},
        "mean_fve": sum(fves) / len(fves),
        "mean_control_fve": sum(ctrl) / len(ctrl),
        "mean_lookup_fve": sum(lookup_fve) / len(lookup_fve),  # type: ignore[arg-type]
        "correct_share_hard": sum(correct) / len(correct),
        "correct_share_random": sum(correct_random) / len(correct_random),
        "rows_with_negative_fve": sum(f < 0 for f in fves),
        "verdicts": {},
    }
    old = [f - c >= FVE_MARGIN for f, c in zip(fves, ctrl, strict=True)]
    out["verdicts"]["before: beats empty by 0.30"] = {
        "hard": _rates(old, correct, fves),
        "random": _rates(old, correct_random, fves),
    }
    for m in MARGINS:
        new = [f > 0 and f >= lk + m for f, lk in zip(fves, lookup_fve, strict=True)]  # type: ignore[operator]
        out["verdicts"][f"after: fve > 0 and >= lookup + {m:.2f}"] = {
            "hard": _rates(new, correct, fves),
            "random": _rates(new, correct_random, fves),
        }
    out["per_row"] = [
        {"doc": d, "token_id": t, "fve": f, "control_fve": c, "lookup_fve": lk, "correct": ok, "correct_random": okr}
        for d, t, f, c, lk, ok, okr in zip(
            docs, token_ids, fves, ctrl, lookup_fve, correct, correct_random, strict=True
        )
    ]
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "per_row"}, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--data", required=True, help="An nla extract directory (its training splits are used).")
    b.add_argument("--out", required=True)
    b.add_argument("--model", default="smollm2-135m")
    b.add_argument("--layer", type=int, default=20)
    b.add_argument("--min-count", type=int, default=2)
    b.add_argument("--top", type=int, default=2000)
    c = sub.add_parser("calibrate")
    c.add_argument("--data", required=True, help="An nla extract directory (its eval split is used).")
    c.add_argument("--table", default=None, help="Token lookup file (default: the shipped NLA's).")
    c.add_argument("--rows", type=int, default=96)
    c.add_argument("--k", type=int, default=8)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--max-new-tokens", type=int, default=150)
    c.add_argument("--batch-size", type=int, default=16)
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--out", default="verdict.json")
    args = ap.parse_args()
    torch.set_num_threads(getattr(args, "threads", 1))
    build(args) if args.cmd == "build" else calibrate(args)


if __name__ == "__main__":
    main()
