"""How much of an activation an AR rebuilds from a teacher's text: held-out ``fve_nrm`` on the same rows for
several (AR, teacher eval parquet) pairs, against one B. This is how a new teacher style is compared with an
old one: train an AR on each style from the same start, with the same steps, then read each style's text of
the same held-out rows (round 4: rich vs compact, docs/results.md §12).

    python bench/teacher_text.py --train-data runs/r4/teach/ar_sft.parquet --rows 128 \\
        --pair rich=runs/r4/ar_rich/final,runs/r4/teach/eval.parquet \\
        --pair compact=runs/r4/ar_compact/final,runs/cmp/teach/eval.parquet --drop "Before it:"
"""

from __future__ import annotations

import argparse
import sys

import torch

from nla.data.activations import activation_matrix, load_vectors, read_parquet
from nla.evaluate.roundtrip import Baseline, evaluate_ar
from nla.models.ar import ActivationReconstructor


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", action="append", required=True, help="NAME=AR_DIR,EVAL_PARQUET (repeat)")
    ap.add_argument("--train-data", required=True, help="training parquet whose vectors give B")
    ap.add_argument("--rows", type=int, default=128, help="first N held-out rows (the card's rows: 128)")
    ap.add_argument("--drop", default="", help="also score the text without its lines starting with this label")
    args = ap.parse_args()
    baseline = Baseline.from_train(load_vectors(args.train_data).vectors)
    gold = None
    sys.stdout.write(f"B = {baseline.value:.4f}, first {args.rows} rows\n")
    sys.stdout.write(f"{'style':<20} {'fve_nrm':>8} {'shuffled':>9} {'empty':>7} {'top1@8':>7}\n")
    for spec in args.pair:
        name, _, paths = spec.partition("=")
        ar_dir, eval_path = paths.split(",")
        data = read_parquet(eval_path, columns=["activation_vector", "explanation"]).table.slice(0, args.rows)
        vectors, _ = activation_matrix(data, eval_path)  # (N, d)
        if gold is None:
            gold = vectors
        elif not torch.equal(gold, vectors):
            sys.stderr.write(f"error: {eval_path} holds other rows than the first pair's file\n")
            return 2
        ar = ActivationReconstructor.from_pretrained(ar_dir)
        texts = data.column("explanation").to_pylist()
        variants = [(name, texts)]
        if args.drop:
            cut = ["\n".join(ln for ln in t.split("\n") if not ln.startswith(args.drop)) for t in texts]
            variants.append((f"{name} -{args.drop.rstrip(':')}", cut))
        for label, variant in variants:
            m = evaluate_ar(ar, variant, vectors, baseline)
            sys.stdout.write(
                f"{label:<20} {m['fve_nrm']:>+8.3f} {m['fve_shuffled']:>+9.3f} {m['fve_empty']:>+7.3f} "
                f"{m['retrieval_top1_at_8']:>7.3f}\n"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
