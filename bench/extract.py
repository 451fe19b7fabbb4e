"""Benchmark ``nla extract``'s batched path against a naive loop on the same SmolLM2 documents.

Naive loop: one document at a time, full forward with ``output_hidden_states=True``, taking
``hidden_states[L + 1]`` at the same positions. Both throughputs count the same tokens (the documents'
tokens after the ``max_tokens`` cap) over wall time; extract's time includes tokenising, decoding the
context strings and writing parquet. Prints both tokens/s, their ratio (goal >= 3x on a 2-core CPU) and
the max abs difference between the two sets of activations.

    python bench/extract.py                 # 64 documents of the default corpus (or a built-in set)
    python bench/extract.py --docs 32 --threads 2 --corpus builtin
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from nla.data.activations import SPLITS, read_split, vectors
from nla.data.documents import Document
from nla.data.extract import ExtractConfig, extract
from nla.data.positions import choose_positions, encode_document
from nla.models.target import load_target

_TOPICS = [
    "rivers",
    "volcanoes",
    "bread",
    "chess",
    "satellites",
    "bees",
    "glaciers",
    "jazz",
    "tides",
    "ferns",
    "bridges",
    "owls",
    "copper",
    "deserts",
    "violins",
    "comets",
]
_VERBS = ["shape", "feed", "warm", "carry", "hide", "reveal", "connect", "change", "protect", "slow"]
_OBJECTS = [
    "the valley",
    "small towns",
    "old maps",
    "the morning air",
    "long winters",
    "city markets",
    "ancient roads",
    "the coastline",
    "quiet farms",
    "our daily habits",
]


def fallback_documents(n: int = 64, seed: int = 0) -> list[Document]:
    """~n varied documents (prose, lists, code, numbers, chats) generated deterministically."""
    rng = random.Random(seed)
    docs: list[Document] = []
    for i in range(n):
        topic = _TOPICS[i % len(_TOPICS)]
        kind = i % 4
        sents = [
            f"{topic.capitalize()} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} in ways that few people notice."
            for _ in range(rng.randint(8, 40))
        ]
        if kind == 0:
            text = " ".join(sents)
        elif kind == 1:
            text = f"Notes on {topic}:\n" + "\n".join(f"{k + 1}. {s}" for k, s in enumerate(sents))
        elif kind == 2:
            body = "\n".join(
                f"    total += {rng.randint(1, 999)} * weight[{k}]  # {s}" for k, s in enumerate(sents[:15])
            )
            text = f"def score_{topic}(weight):\n    total = 0\n{body}\n    return total\n"
        else:
            msgs = (
                {"role": "user", "content": f"Tell me about {topic}. " + " ".join(sents[:3])},
                {"role": "assistant", "content": " ".join(sents[3:])},
            )
            docs.append(Document(f"bench-{i:03d}", messages=msgs, source="bench/chat"))
            continue
        docs.append(Document(f"bench-{i:03d}", text=text, source="bench/text"))
    return docs


def load_docs(n: int, corpus: str) -> tuple[list[Document], str]:
    if corpus == "builtin":
        return fallback_documents(n), "built-in set"
    try:
        from nla.data.corpus import load_corpus

        docs = list(load_corpus(corpus, limit=n))
        if docs:
            return docs, f"corpus {corpus!r}"
    except Exception as e:  # noqa: BLE001 - a benchmark falls back on any corpus problem
        print(f"(default corpus unavailable: {type(e).__name__}: {e}; using the built-in set)")
    return fallback_documents(n), "built-in fallback set"


@torch.no_grad()
def naive(target, docs: list[Document], layer: int, cfg: ExtractConfig) -> tuple[dict, int, float]:
    """One document at a time, full forward with all hidden states; -> ({(doc_id, pos): vec}, tokens, s)."""
    out: dict[tuple[str, int], torch.Tensor] = {}
    tokens = 0
    t0 = time.perf_counter()
    for doc in docs:
        enc = encode_document(target.tokenizer, doc, cfg.max_tokens, cfg.skip)
        pos = choose_positions(doc.doc_id, len(enc.ids), enc.start, cfg.positions_per_doc, cfg.seed)
        if not pos:
            continue
        tokens += len(enc.ids)
        hs = target.model(torch.tensor([enc.ids]), output_hidden_states=True).hidden_states
        for p in pos:
            out[(doc.doc_id, p)] = hs[layer + 1][0, p].float()  # (d,)
    return out, tokens, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-tokens", type=int, default=1024)
    ap.add_argument("--corpus", default="default", help="'default', a corpus path, or 'builtin' (the fallback set)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    target = load_target("smollm2-135m")
    docs, source = load_docs(args.docs, args.corpus)
    layer = target.default_layer
    with tempfile.TemporaryDirectory() as tmp:
        cfg = ExtractConfig(out=str(Path(tmp) / "acts"), batch_tokens=args.batch_tokens)
        ids = target.tokenizer("warm up the kernels " * 20, return_tensors="pt").input_ids
        target.hidden_at(ids, None, layer)  # warm-up
        t0 = time.perf_counter()
        res = extract(cfg, target, documents=docs)
        batched_s = time.perf_counter() - t0
        rows = [r for s in SPLITS for r in read_split(cfg.out, s, columns=["doc_id", "position"]).to_pylist()]
        vecs = torch.cat([vectors(read_split(cfg.out, s)) for s in SPLITS])  # (N, d), same order as rows
    ref, naive_tokens, naive_s = naive(target, docs, layer, cfg)
    assert naive_tokens == res.dataset_tokens and len(ref) == len(rows)
    ref_vecs = torch.stack([ref[(r["doc_id"], r["position"])] for r in rows])  # (N, d)
    diff = (vecs - ref_vecs).abs().max().item()
    rel = diff / ref_vecs.abs().max().item()
    batched_tps = res.dataset_tokens / batched_s
    naive_tps = naive_tokens / naive_s
    print(
        f"SmolLM2-135M layer {layer}, {len(docs)} documents ({source}), {res.n_used_docs} used, "
        f"{res.n_rows} positions, {res.dataset_tokens} tokens, {args.threads} threads"
    )
    print(
        f"nla extract (batched, stops at block {layer}, cut after last position): {batched_tps:8.0f} tok/s "
        f"({batched_s:.2f} s wall incl. tokenise/decode/parquet; {res.tokens} tokens forwarded)"
    )
    print(
        f"naive loop (1 doc, full forward, output_hidden_states):            {naive_tps:8.0f} tok/s ({naive_s:.2f} s)"
    )
    print(f"speed-up: {batched_tps / naive_tps:.2f}x (goal >= 3x)")
    print(f"max |batched - naive| = {diff:.3g} (relative to max |activation|: {rel:.2g})")


if __name__ == "__main__":
    main()
