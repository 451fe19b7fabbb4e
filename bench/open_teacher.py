"""What the open-vocabulary teacher costs and what it writes: rows/s of the offline teacher's ``rich`` and
``open`` styles on the same contexts (the target's forward pass is shared work; the open style adds the
WordNet field, timed on its own), the WordNet load time (text files, then the JSON cache), and the two
styles' topic lines side by side on held-out texts of the novel-concept split (docs/teacher.md).

    OMP_NUM_THREADS=1 python bench/open_teacher.py --rows 64 --examples 10
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from nla.faithfulness.concepts import load_concepts
from nla.models.target import load_target
from nla.teach.base import TeacherOptions, parse_answer
from nla.teach.lexicon import load_wordnet, wordnet_dir
from nla.teach.offline import OfflineTeacher


def contexts(n: int) -> list[str]:
    """``n`` chat contexts that end inside the assistant's turn: shipped corpus prompts plus the start of an
    answer (the rows a teacher sees look like this; the texts are only timed here)."""
    from nla.resources import resource

    lines = [ln.strip() for ln in resource("chat_prompts.txt").read_text(encoding="utf-8").splitlines()]
    prompts = [ln for ln in lines if ln and not ln.startswith(("#", "["))][:n]
    return [f"<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\nHere is what I would suggest" for p in prompts]


def recall(n_examples: int) -> None:
    """How often each style's topic line names the concept of a held-out text, per split, and how often it
    names another concept of the suite or (on the neutral texts) any concept; then ``n_examples`` novel texts
    with both lines. Only the topic line is written here (no forward pass: it does not depend on the model)."""
    teacher = OfflineTeacher.__new__(OfflineTeacher)  # the topic line only: no target is loaded
    teacher._wordnet, teacher.lexicon_seconds = load_wordnet(), 0.0
    line = {"rich": lambda x: OfflineTeacher._about(x, False), "open": lambda x: teacher._open_about(x, False)}
    suite = load_concepts()
    for split in ("covered", "novel"):
        texts = [(c, t) for c in load_concepts(splits=[split]).concepts for t in c.heldout]
        for style, about in line.items():
            lines = [(c, about(t)) for c, t in texts]
            hit = sum(c.named_in(x) for c, x in lines)
            other = sum(any(o != c.name for o in suite.named(x)) for c, x in lines)
            fp = sum(bool(suite.named(about(t))) for t in suite.neutral_heldout) if split == "novel" else None
            extra = f"; neutral texts naming a concept {fp}/{len(suite.neutral_heldout)}" if fp is not None else ""
            print(f"{split} held-out texts, {style} topic line: names the concept {hit}/{len(lines)}, "
                  f"another concept {other}/{len(lines)}{extra}")  # fmt: skip
    if n_examples:
        novel = load_concepts(splits=["novel"]).concepts[:n_examples]
        print("\n| concept | held-out text | rich (old) topic line | open (new) topic line |\n|---|---|---|---|")
        for c in novel:
            t = c.heldout[0]
            print(f"| {c.name} | {t} | {line['rich'](t)} | {line['open'](t)} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=64, help="contexts timed per style")
    ap.add_argument("--examples", type=int, default=10, help="novel-concept held-out texts shown (0 = none)")
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()
    torch.manual_seed(0)

    load_wordnet.cache_clear()
    started = time.perf_counter()
    load_wordnet()
    print(f"WordNet at {wordnet_dir()}: loaded in {time.perf_counter() - started:.2f} s (cache or parse)")

    target = load_target(args.model)
    ctxs = contexts(args.rows)
    timings = {}
    for style in ("rich", "open"):
        teacher = OfflineTeacher(TeacherOptions(style=style, batch_size=8), target=target)
        teacher.answer(ctxs[:2])  # warm-up
        teacher.lexicon_seconds = 0.0
        started = time.perf_counter()
        answers = teacher.answer(ctxs)
        wall = time.perf_counter() - started
        kept = sum(parse_answer(a)[1] is None for a in answers)
        timings[style] = wall
        extra = ""
        if style == "open":
            lex = teacher.lexicon_seconds
            extra = f"; WordNet field and words {lex:.2f} s = {len(ctxs) / max(lex, 1e-9):.0f} rows/s"
            unclear = sum("Topic: unclear" in a for a in answers if a)
            extra += f"; topic unclear in {unclear}/{len(ctxs)}"
        print(f"style {style}: {len(ctxs)} rows in {wall:.2f} s = {len(ctxs) / wall:.1f} rows/s, {kept} kept{extra}")
    print(f"open / rich wall time: {timings['open'] / timings['rich']:.3f}")

    recall(args.examples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
