"""How often an AV's explanations name the true final token of their context.

Reads a ``nla verbalize`` parquet (or a teacher parquet) and compares the quoted final token of each
explanation -- ``Final token: "X"`` (compact offline style) or ``The final token is "X"`` (full style) --
with the row's ``token`` column, both in the teachers' readable form. A claim that can be checked, unlike
most of an explanation: the share of rows that get it right is a floor on how grounded the explanations
are.

    python bench/final_token.py runs/cmp/av_text.parquet
"""

from __future__ import annotations

import argparse
import re

import pyarrow.parquet as pq

from nla.core.text import readable

_CLAIM = re.compile(r'(?:Final token:|The final token is) "((?:[^"\\]|\\.)*)"')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parquet", nargs="+", help="verbalize or teacher parquet(s) with token + explanation columns")
    args = ap.parse_args()
    for path in args.parquet:
        rows = pq.read_table(path, columns=["token", "explanation"]).to_pylist()
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


if __name__ == "__main__":
    main()
