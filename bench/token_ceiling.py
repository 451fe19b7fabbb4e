"""How much of an activation its last tokens predict: the FVE of per-token mean vectors, held out.

For every training row (all splits but ``eval``) the normalised activation is filed under its final
token, the pair (previous token, final token), and (chat or prose, final token); the prediction for an
eval row is the mean vector of its key, backing off to shorter keys and then to the overall mean. The
score is ``fve_nrm`` against the same B as the card (mean of the normalised ``ar_sft`` vectors). This is
a lookup table, no model: it bounds from below what an explanation that names these tokens correctly
can be worth, and shows why the compact teacher style starts with the final token.

    python bench/token_ceiling.py --data runs/smol/acts
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from nla.core.metrics import mean_baseline, mse_nrm, unit
from nla.data.activations import read_split
from nla.data.activations import vectors as table_vectors


def _rows(data: str, split: str) -> tuple[torch.Tensor, list[str], list[str], list[str]]:
    t = read_split(data, split, ["activation_vector", "doc_id", "detokenized_text_truncated", "token"])
    return (
        unit(table_vectors(t)),
        t.column("doc_id").to_pylist(),
        t.column("detokenized_text_truncated").to_pylist(),
        t.column("token").to_pylist(),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="runs/smol/acts", help="an `nla extract` directory")
    ap.add_argument("--model", default="smollm2-135m", help="tokenizer of the extraction's model")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from nla.models.target import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path(args.model))

    def keys(docs: list[str], ctxs: list[str]) -> list[tuple[tuple, ...]]:
        out = []
        for doc, ctx in zip(docs, ctxs, strict=True):
            ids = tuple(tok(ctx, add_special_tokens=False)["input_ids"][-2:])
            kind = "chat" if doc.startswith("chat") else "prose"
            out.append(((ids[-1],), ids, (kind, ids[-1])))
        return out

    train = {s: _rows(args.data, s) for s in ("av_sft", "ar_sft", "rl")}
    B = mean_baseline(train["ar_sft"][0])
    vecs = torch.cat([t[0] for t in train.values()])
    train_keys = [k for t in train.values() for k in keys(t[1], t[2])]
    held, docs, ctxs, _ = _rows(args.data, "eval")
    held_keys = keys(docs, ctxs)
    overall = vecs.mean(0)
    print(f"train rows {len(train_keys)}, eval rows {len(held_keys)}, B = {B:.4f}")
    for name, order in (("final token", [0]), ("previous + final token", [1, 0]), ("chat/prose + final token", [2, 0])):
        sums: dict[tuple, torch.Tensor] = defaultdict(lambda: torch.zeros_like(overall))
        counts: dict[tuple, int] = defaultdict(int)
        for k, v in zip(train_keys, vecs, strict=True):
            for j in order:
                sums[k[j]] += v
                counts[k[j]] += 1
        preds, hits = [], 0
        for k in held_keys:
            j = next((j for j in order if counts.get(k[j], 0) > 0), None)
            hits += j == order[0]
            preds.append(sums[k[j]] / counts[k[j]] if j is not None else overall)
        fve = 1 - float(mse_nrm(torch.stack(preds), held).mean()) / B
        print(
            f"{name:<26} fve_nrm {fve:+.3f}   (full key seen in training for {hits / len(held_keys):.0%} of eval rows)"
        )


if __name__ == "__main__":
    main()
