"""Greedy explanations of held-out vectors, written to JSON, to compare two versions of the code.

Runs ``NLA.explain_vectors`` (shipped NLA, greedy: ``best_of=1``, library defaults otherwise) on the
vectors of a safetensors file (key ``vectors``, (N, d)) and writes ``{"raw": [...], "seconds": s}``.
Run it once with each checkout on the path, then ``--compare A.json B.json`` counts identical answers
and prints the first differences.

    PYTHONPATH=/work/main/src python bench/same_greedy.py --vectors v.safetensors --out old.json
    PYTHONPATH=src python bench/same_greedy.py --vectors v.safetensors --out new.json
    python bench/same_greedy.py --compare old.json new.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def compare(a: Path, b: Path) -> None:
    ra, rb = (json.loads(p.read_text()) for p in (a, b))
    same = [x == y for x, y in zip(ra["raw"], rb["raw"], strict=True)]
    print(f"identical greedy answers: {sum(same)}/{len(same)}; seconds {ra['seconds']:.1f} vs {rb['seconds']:.1f}")
    for i, ok in enumerate(same):
        if not ok:
            print(f"row {i}:\n  A: {ra['raw'][i]!r}\n  B: {rb['raw'][i]!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=150)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compare", nargs=2, type=Path)
    args = ap.parse_args()
    if args.compare:
        return compare(*args.compare)
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    from nla.explain.api import NLA

    vectors = load_file(str(args.vectors))["vectors"]
    if args.limit:
        vectors = vectors[: args.limit]
    nla = NLA.from_pretrained(with_target=False)
    t0 = time.perf_counter()
    recs = nla.explain_vectors(vectors, best_of=1, max_new_tokens=args.max_new_tokens)
    seconds = time.perf_counter() - t0
    args.out.write_text(json.dumps({"raw": [r.raw for r in recs], "seconds": seconds, "load": os.getloadavg()}))
    print(f"{len(recs)} greedy explanations in {seconds:.1f} s")


if __name__ == "__main__":
    main()
