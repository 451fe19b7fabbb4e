"""How far a teacher's topic label is a function of the activation vector: for each held-out row, the
labels of its k nearest training rows (cosine of the vectors).

An AV learns to write what its vector predicts. When rows with nearly the same vector carry different
labels, the most likely label at the topic slot is the commonest one ("unclear"), and greedy decoding
writes it. This prints, for the held-out rows whose teacher names a topic, how often that label is among
the labels of the k neighbours and how often it is their most common label; and for all held-out rows
how often the neighbours' most common label is "unclear" (what a nearest-neighbour AV would write).
The same for the salient words: the share of a row's words that some neighbour lists too.

    python bench/label_neighbours.py runs/nla/teach/av_sft.parquet runs/nla/teach/eval.parquet --k 8
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import pyarrow.parquet as pq

from nla.core.text import UNCLEAR, topic_claims


def read(path: str) -> tuple[np.ndarray, list[tuple[str, list[str]]]]:
    """Unit-norm vectors and (topic, words) of a teacher parquet's rows that have a topic line."""
    rows = pq.read_table(path, columns=["activation_vector", "explanation"]).to_pylist()
    kept = [(r["activation_vector"], c) for r in rows if (c := topic_claims(r["explanation"] or "")) is not None]
    v = np.asarray([k[0] for k in kept], dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True), [k[1] for k in kept]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("train", help="teacher parquet of the training rows (e.g. teach/av_sft.parquet)")
    ap.add_argument("heldout", help="teacher parquet of held-out rows of other documents (e.g. teach/eval.parquet)")
    ap.add_argument("--k", type=int, default=8, help="neighbours per held-out row (default: %(default)s)")
    args = ap.parse_args()
    vt, ct = read(args.train)
    ve, ce = read(args.heldout)
    nearest = np.argsort(-(ve @ vt.T), axis=1)[:, : args.k]
    among = top = unclear = words = words_seen = 0
    named = [i for i, (topic, _) in enumerate(ce) if topic != UNCLEAR]
    for i, row in enumerate(nearest):
        labels = Counter(ct[j][0] for j in row)
        common = labels.most_common(1)[0][0]
        unclear += common == UNCLEAR
        if ce[i][0] != UNCLEAR:
            among += ce[i][0] in labels
            top += common == ce[i][0]
        near_words = {w for j in row for w in ct[j][1]}
        words += len(ce[i][1])
        words_seen += sum(w in near_words for w in ce[i][1])
    n, m = len(ce), max(1, len(named))
    print(f"{len(ct)} training rows, {n} held-out rows, {len(named)} of them with a topic other than {UNCLEAR!r}; "
          f"k = {args.k}")  # fmt: skip
    print(f"  held-out label among the neighbours' labels: {among / m:.1%}; their most common label: {top / m:.1%}")
    print(f"  neighbours' most common label is {UNCLEAR!r}: {unclear / max(1, n):.1%} of all held-out rows")
    print(f"  held-out salient words that some neighbour lists: {words_seen / max(1, words):.1%} of {words}")


if __name__ == "__main__":
    main()
