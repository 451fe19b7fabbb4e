"""Turn a chat corpus into plain prose: one document per chat holding its assistant answers, without the
chat template, the system turn or the user's questions (scripts/round7.sh uses it on the topic-balanced chats,
so that the AV also sees English prose about each topic: the default corpus's prose is software
documentation).

    python scripts/chat_answers.py runs/round7/topics.jsonl --out runs/round7/topic_prose.jsonl
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nla.data.corpus import load_corpus
from nla.data.documents import Document, write_jsonl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", help="a chat corpus (JSONL, as `nla corpus build` writes)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    docs = []
    for doc in load_corpus(args.corpus):
        answers = [m["content"].strip() for m in doc.messages or [] if m["role"] == "assistant"]
        if text := "\n\n".join(a for a in answers if a):
            docs.append(Document(doc_id=f"prose-{doc.doc_id}", text=text, source=f"answers:{doc.source}"))
    if not docs:
        raise SystemExit(f"{args.corpus}: no chat with an assistant answer")
    write_jsonl(docs, Path(args.out))
    sys.stderr.write(f"wrote {len(docs)} documents to {args.out}\n")


if __name__ == "__main__":
    main()
