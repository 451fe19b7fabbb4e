"""Which layer to explain: residual-stream statistics per layer of a target, from one backbone pass per document.

For each layer in ``--layers`` it prints, over vectors at up to ``--positions`` random positions per prose
document (after the first ``--skip`` tokens; offline prose passages of installed software, no generation):

- ``norm``: mean activation norm (``inject`` normalises to a scale above it) and ``p99/med``, the spread;
- ``top1``: mean share of the squared norm in the largest coordinate (massive-activation outliers);
- ``B``: the predict-the-mean baseline (mean-of-normalised, training rows) that fve_nrm divides by;
- ``var1``: share of the normalised vectors' variance along the one coordinate with the largest mean (where
  one coordinate holds most of the norm, fve_nrm mostly grades how large that coordinate is);
- ``lookup`` / ``lookup2``: held-out fve_nrm of the last-token and last-two-token lookup tables
  (:mod:`nla.evaluate.lookup`), documents split 80/20: how much of the vector the final token(s) alone
  predict. An explanation has to beat these to show it carries context;
- ``pos``: the same lookup keyed by the position (buckets of 16 tokens) instead of the token: a vector that
  the position predicts is one no explanation of the text can reconstruct;
- ``doc``: the share of the normalised vectors' variance that lies between documents (one-way ANOVA estimate
  of the between-document component, unbiased for the few positions per document), i.e. what the document
  as a whole (its topic, register, language) could explain at most; ``doc|tok``: the same share of what is
  left after the last-token lookup (fitted on the other 4 of 5 document folds) is subtracted, i.e. document
  information beyond the final token.

Only the decoder blocks run (no LM head: Gemma's 262k-token head would cost more than the blocks).

    python bench/layer_sweep.py --model gemma3-270m --layers 4,6,9,12,14,16 --docs 200
    python bench/layer_sweep.py --model smollm2-135m --layers 10,15,20,25 --docs 200
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from nla.core.metrics import between_group_share, fve_nrm, mean_baseline, unit
from nla.data.prose import web_passages
from nla.evaluate.lookup import lookup_predict, token_lookup_rows
from nla.models.target import load_target


def lookup_residual(v: torch.Tensor, keys: list, owner: list[int], folds: int = 5) -> torch.Tensor:  # (N, d)
    """unit(v) minus its last-token lookup prediction, each document's rows predicted from the other folds."""
    u, out = unit(v), torch.zeros_like(v)
    fold = [o % folds for o in owner]
    for f in range(folds):
        train = [i for i, k in enumerate(fold) if k != f]
        test = [i for i, k in enumerate(fold) if k == f]
        pred, _ = lookup_predict([[keys[i][-1:]] for i in train], v[train], [[keys[i][-1:]] for i in test])
        out[test] = u[test] - pred
    return out


@torch.no_grad()
def collect(t, docs, layers: list[int], positions: int, skip: int, max_tokens: int, seed: int):
    """Vectors (per layer), last-two-token keys and doc index of every sampled position."""
    body = t.model.get_decoder() if hasattr(t.model, "get_decoder") else t.model.model
    rng = random.Random(seed)
    vecs: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    keys: list[tuple[int, ...]] = []
    owner: list[int] = []
    where: list[int] = []
    for i, doc in enumerate(docs):
        ids = t.tokenizer(doc.text, return_tensors="pt").input_ids[:, :max_tokens]  # (1, T)
        n = ids.shape[1]
        if n <= skip + 1:
            continue
        pos = sorted(rng.sample(range(skip, n), min(positions, n - skip)))
        hs = body(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states  # L+1 x (1, T, d)
        for layer in layers:
            vecs[layer].append(hs[layer + 1][0, pos].float())  # "layer L" = output of block L
        row = ids[0].tolist()
        keys += [tuple(row[p - 1 : p + 1]) for p in pos]
        owner += [i] * len(pos)
        where += pos
    return {layer: torch.cat(v) for layer, v in vecs.items()}, keys, owner, where


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--layers", default="", help="comma-separated block indices (default: quarters of the depth)")
    ap.add_argument("--docs", type=int, default=200)
    ap.add_argument("--positions", type=int, default=8)
    ap.add_argument("--skip", type=int, default=50)
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t = load_target(args.model)
    n = t.n_layers
    quarters = sorted({n // 4, n // 2, t.default_layer, n - 2})
    layers = [int(x) for x in args.layers.split(",")] if args.layers else quarters
    docs = web_passages(args.docs)
    t0 = time.perf_counter()
    vecs, keys, owner, where = collect(t, docs, layers, args.positions, args.skip, args.max_tokens, args.seed)
    secs = time.perf_counter() - t0
    held = torch.tensor([o % 5 == 0 for o in owner])  # documents split 80/20
    n_rows = len(keys)
    print(
        f"# {args.model}: {n} blocks, d={t.d_model}; {n_rows} vectors from {len(set(owner))} docs "
        f"({int(held.sum())} held out); {secs:.0f} s for the backbone passes (1 thread)"
    )
    head = ("layer", "depth", "norm", "p99/med", "top1", "var1", "B", "lookup", "lookup2", "pos", "doc", "doc|tok")
    print(" ".join(f"{h:>7}" for h in head))
    train_keys = [k for k, h in zip(keys, held.tolist(), strict=True) if not h]
    held_keys = [k for k, h in zip(keys, held.tolist(), strict=True) if h]
    buckets = [(p // 16,) for p in where]
    train_pos = [b for b, h in zip(buckets, held.tolist(), strict=True) if not h]
    held_pos = [b for b, h in zip(buckets, held.tolist(), strict=True) if h]
    for layer in layers:
        v = vecs[layer]  # (N, d)
        norms = v.norm(dim=-1)
        top1 = float((v.pow(2).max(-1).values / norms.pow(2)).mean())
        spread = float(norms.quantile(0.99) / norms.median())
        b = mean_baseline(v[~held])
        rows = token_lookup_rows(train_keys, v[~held], held_keys, v[held])
        f1, f2 = fve_nrm(rows["final"], b), fve_nrm(rows["last_two"], b)
        fp = fve_nrm(token_lookup_rows(train_pos, v[~held], held_pos, v[held])["final"], b)
        u = unit(v[~held])
        var = u.var(0)  # (d,)
        var1 = float(var[u.mean(0).abs().argmax()] / var.sum())
        groups = torch.tensor(owner)
        doc, doc_tok = (
            between_group_share(unit(v), groups),
            between_group_share(lookup_residual(v, keys, owner), groups),
        )
        cells = (layer, (layer + 1) / n, float(norms.mean()), spread, top1, var1, b, f1, f2, fp, doc, doc_tok)
        print(f"{cells[0]:>7} {cells[1]:>7.2f} {cells[2]:>7.0f}" + "".join(f" {c:>7.3f}" for c in cells[3:]))


if __name__ == "__main__":
    main()
