"""How often an AV's explanations state the checkable facts right: the final token, and the rich style's
topic, language and setting lines against the teacher's.

Reads a ``nla verbalize`` parquet (or a teacher parquet) and compares the quoted final token of each
explanation -- ``Final token: "X"`` (compact and rich offline styles) or ``The final token is "X"`` (full
style) -- with the row's ``token`` column, both in the teachers' readable form. A claim that can be
checked, unlike most of an explanation: the share of rows that get it right is a floor on how grounded the
explanations are.

With ``--teacher`` (the teacher parquet of the same split: ``nla verbalize --limit N`` explains the first
N rows of the split, which the teacher file holds in the same order) it also prints, for the rich style,
how often the AV's ``Topic:`` label, ``Language:`` and the first clause of ``Setting:`` equal the teacher's,
the share of "unclear" topics on both sides, how many AV explanations list a salient word twice (a
greedy-decoding degeneracy: "words: chicken, chicken"), and the precision and recall of the AV's distinct
salient words against the teacher's. Teacher rows are matched to the AV's by
``(doc_id, position)``, so ``nla verbalize --every N`` output compares as well as ``--limit N``.

For explanations with a ``Before it: "..."`` quote (the text before the final token, compact and rich styles
with ``--tail-tokens`` > 0) it prints how often the quote's last 2 / 8 characters, and the whole quote, are
the real text just before the final token: what an AV knows of the exact preceding words.

    python bench/final_token.py runs/cmp/av_text.parquet
    python bench/final_token.py runs/r4/av_greedy.parquet --teacher runs/r4/teach/ar_sft.parquet
"""

from __future__ import annotations

import argparse
import re

import pyarrow.parquet as pq

from nla.core.text import readable

CONTEXT = "detokenized_text_truncated"

_CLAIM = re.compile(r'(?:Final token:|The final token is) "((?:[^"\\]|\\.)*)"')
_TOPIC = re.compile(r"Topic: ([^;.\n]+)(?:; words: ([^\n]*?))?\. Language: ([^.\n]+)\.")
_SETTING = re.compile(r"Setting: ([^,.\n]+)")
_BEFORE = re.compile(r'Before it: "((?:[^"\\]|\\.)*)"')


def quote_tail_match(explanation: str, context: str, token: str) -> int | None:
    """How many trailing characters of the ``Before it:`` quote equal the real text before the final token."""
    m = _BEFORE.search(explanation)
    if m is None:
        return None
    quote = m.group(1).removeprefix("...")
    text, final = readable(context).replace('"', "'"), readable(token).replace('"', "'")
    before = text[: len(text) - len(final)] if text.endswith(final) else text
    k = 0
    while k < len(quote) and before.endswith(quote[len(quote) - k - 1 :]):
        k += 1
    return k


def lines(text: str) -> dict[str, object]:
    """The rich style's checkable fields of one explanation (missing fields are absent)."""
    out: dict[str, object] = {}
    m = _TOPIC.search(text)
    if m:
        out["topic"], out["language"] = m.group(1).strip(), m.group(3).strip()
        out["words"] = [w.strip() for w in (m.group(2) or "").split(",") if w.strip()]
    m = _SETTING.search(text)
    if m:
        out["setting"] = m.group(1).strip()
    return out


def compare(av: list[str], teacher: list[str]) -> dict[str, float]:
    """Agreement of the AV's rich-style fields with the teacher's, row by row."""
    pairs = [(lines(a), lines(t)) for a, t in zip(av, teacher, strict=False)]
    n = max(1, len(pairs))
    res = {
        f"{k} agrees": sum(a.get(k) is not None and a.get(k) == t.get(k) for a, t in pairs) / n
        for k in ("topic", "language", "setting")
    }
    res["topic unclear (AV)"] = sum(a.get("topic") == "unclear" for a, _ in pairs) / n
    res["topic unclear (teacher)"] = sum(t.get("topic") == "unclear" for _, t in pairs) / n
    repeated = [len(w) != len(set(w)) for w in (a.get("words") or [] for a, _ in pairs)]
    res["a salient word listed twice (AV)"] = sum(repeated) / n
    own = [(set(a.get("words") or []), set(t.get("words") or [])) for a, t in pairs]  # distinct words, as written
    hits = sum(len(a & t) for a, t in own)
    res["salient words: AV's found among the teacher's (precision)"] = hits / max(1, sum(len(a) for a, _ in own))
    res["salient words: teacher's found among the AV's (recall)"] = hits / max(1, sum(len(t) for _, t in own))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parquet", nargs="+", help="verbalize or teacher parquet(s) with token + explanation columns")
    ap.add_argument("--teacher", default="", help="teacher parquet of the same split, rows in the same order")
    args = ap.parse_args()
    keyed = ["doc_id", "position", "explanation"]
    teacher = {(r["doc_id"], r["position"]): r["explanation"] for r in pq.read_table(args.teacher, columns=keyed)
               .to_pylist()} if args.teacher else {}  # fmt: skip
    for path in args.parquet:
        rows = pq.read_table(path, columns=["doc_id", "position", "token", "explanation", CONTEXT]).to_pylist()
        named = right = 0
        for r in rows:
            m = _CLAIM.search(r["explanation"] or "")
            if m is None:
                continue
            named += 1
            truth = readable(r["token"]).replace('"', "'")
            right += m.group(1) == truth
        n = max(1, len(rows))
        print(f"{path}: {len(rows)} rows, final token named in {named / n:.1%}, right in {right / n:.1%}")
        tails = [quote_tail_match(r["explanation"] or "", r[CONTEXT], r["token"]) for r in rows]
        quoted = [k for k in tails if k is not None]
        if quoted:
            whole = sum(k == len(_BEFORE.search(r["explanation"]).group(1).removeprefix("..."))
                        for r, k in zip(rows, tails, strict=True) if k is not None)  # fmt: skip
            q = len(quoted)
            two, eight = sum(k >= 2 for k in quoted) / q, sum(k >= 8 for k in quoted) / q
            print(f"  'Before it:' quote in {q / n:.1%}; its last 2 / 8 characters real in {two:.1%} / {eight:.1%}, "
                  f"all of it in {whole / q:.1%}")  # fmt: skip
        if teacher:
            both = [
                (r["explanation"] or "", teacher[k]) for r in rows if (k := (r["doc_id"], r["position"])) in teacher
            ]
            print(f"  {len(both)} rows matched in the teacher file")
            for name, value in compare([a for a, _ in both], [t for _, t in both]).items():
                print(f"  {name}: {value:.1%}")


if __name__ == "__main__":
    main()
