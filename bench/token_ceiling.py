"""How much of an activation its last tokens predict: the FVE of per-token mean vectors, held out.

For every training row the normalised activation is filed under its final token, the pair (previous
token, final token), and (chat or prose, final token); the prediction for an eval row is the mean vector
of its key, backing off to shorter keys and then to the overall mean. The score is ``fve_nrm`` against the
same B as the card (mean of the normalised ``ar_sft`` vectors). This is a lookup table, no model: it bounds
from below what an explanation that names these tokens correctly can be worth, and shows why the compact
teacher style starts with the final token. The table itself is the library's token-lookup control
(:mod:`nla.evaluate.lookup`, printed on every ``nla eval`` card and in ``nla faithfulness``).

    python bench/token_ceiling.py --data runs/smol/acts                  # training rows: av_sft + ar_sft + rl
    python bench/token_ceiling.py --data runs/smol/acts --train-splits ar_sft   # as the card does
"""

from __future__ import annotations

import argparse

import torch

from nla.core.metrics import fve_nrm, mean_baseline, mse_nrm
from nla.data.activations import read_split
from nla.data.activations import vectors as table_vectors
from nla.evaluate.lookup import last_token_ids, lookup_predict


def _rows(data: str, split: str) -> tuple[torch.Tensor, list[str], list[str]]:
    t = read_split(data, split, ["activation_vector", "doc_id", "detokenized_text_truncated"])
    return (
        table_vectors(t),
        t.column("doc_id").to_pylist(),
        t.column("detokenized_text_truncated").to_pylist(),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="runs/smol/acts", help="an `nla extract` directory")
    ap.add_argument("--model", default="smollm2-135m", help="tokenizer of the extraction's model")
    ap.add_argument("--train-splits", default="av_sft,ar_sft,rl", help="splits whose rows fill the tables")
    args = ap.parse_args()
    from nla.models.target import load_tokenizer

    tok = load_tokenizer(args.model)

    def keys(docs: list[str], ctxs: list[str]) -> list[tuple[tuple, ...]]:
        kinds = ["chat" if d.startswith("chat") else "prose" for d in docs]
        return [((ids[-1],), ids, (kind, ids[-1])) for ids, kind in zip(last_token_ids(tok, ctxs), kinds, strict=True)]

    train = {s: _rows(args.data, s) for s in args.train_splits.split(",")}
    B = mean_baseline(read_split_vectors(args.data, "ar_sft"))
    vecs = torch.cat([t[0] for t in train.values()])
    train_keys = [k for t in train.values() for k in keys(t[1], t[2])]
    held, docs, ctxs = _rows(args.data, "eval")
    held_keys = keys(docs, ctxs)
    print(f"train rows {len(train_keys)} ({args.train_splits}), eval rows {len(held_keys)}, B = {B:.4f}")
    for name, order in (("final token", [0]), ("previous + final token", [1, 0]), ("chat/prose + final token", [2, 0])):
        pred, levels = lookup_predict(
            [[k[j] for j in order] for k in train_keys], vecs, [[k[j] for j in order] for k in held_keys]
        )
        fve = fve_nrm(mse_nrm(pred, held), B)
        seen = sum(lv == 0 for lv in levels) / len(levels)
        print(f"{name:<26} fve_nrm {fve:+.3f}   (full key seen in training for {seen:.0%} of eval rows)")


def read_split_vectors(data: str, split: str) -> torch.Tensor:
    return table_vectors(read_split(data, split, ["activation_vector"]))


if __name__ == "__main__":
    main()
