"""Write a corpus JSONL of passages in other languages from the translations installed on this machine
(``nla.data.prose.locale_passages``), for training an NLA to name the language of a text.

    python scripts/locale_corpus.py --out runs/locale.jsonl --languages fr de es it pt nl --per-language 40
"""

from __future__ import annotations

import argparse
import sys

from nla.data.documents import write_jsonl
from nla.data.prose import locale_passages


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--languages", nargs="+", default=["fr", "de", "es", "it", "pt", "nl"])
    ap.add_argument("--per-language", type=int, default=40)
    args = ap.parse_args()
    docs = []
    for lang in args.languages:
        found = locale_passages(lang, args.per_language)
        sys.stderr.write(f"{lang}: {len(found)} passages\n")
        docs += found
    if not docs:
        sys.stderr.write("error: no installed translations found under /usr/share/locale\n")
        return 2
    write_jsonl(docs, args.out)
    sys.stderr.write(f"wrote {len(docs)} documents to {args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
