"""``nla corpus build`` (the offline default corpus) and ``nla corpus stats SPEC`` (what a corpus holds).

nla corpus build --n-chat 1000 --n-web 1000 --max-new-tokens 96
nla corpus build --prompts topics --n-chat 900 --n-web 0 --out topics.jsonl      # supplementary corpora
nla corpus build --prompts scenes --n-chat 380 --n-web 0 --max-new-tokens 128 --out scenes.jsonl
nla corpus build --answers-of topics.jsonl --out topic_prose.jsonl
nla corpus build --locale fr de es it pt nl --per-language 40 --out locale.jsonl
nla corpus stats default
nla corpus stats my_docs.jsonl --limit 500
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import textwrap
from pathlib import Path

from nla.common.config import add_config_args, config_from_args
from nla.common.errors import NLAError
from nla.data.corpus import corpus_stats, load_corpus
from nla.data.corpus_default import DefaultCorpusConfig, build_default_corpus
from nla.data.documents import Document
from nla.data.supplementary import build_supplementary, prompt_file


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("corpus", help="Build the offline default corpus or inspect a corpus.")
    csub = p.add_subparsers(dest="corpus_command", required=True, metavar="ACTION")
    what = "Build the default corpus or a supplementary one (--prompts topics|scenes, --locale, --answers-of)."
    b = csub.add_parser("build", help=what)
    add_config_args(b, DefaultCorpusConfig)
    b.set_defaults(func=run_build)
    s = csub.add_parser("stats", help="Counts by kind and source, word-length statistics and samples of a corpus.")
    s.add_argument("spec", help="'default', 'hf:NAME[:CONFIG][@SPLIT]', a folder, or a .txt/.md/.jsonl/.parquet file.")
    s.add_argument("--limit", type=int, default=None, help="Read at most this many documents.")
    s.add_argument("--samples", type=int, default=2, help="Sample documents to show (default: %(default)s).")
    s.add_argument("--json", action="store_true", help="Print the statistics as JSON only.")
    s.set_defaults(func=run_stats)


def run_build(args: argparse.Namespace) -> int:
    cfg = config_from_args(DefaultCorpusConfig, args)
    kwargs = dataclasses.asdict(cfg)
    out = kwargs.pop("out")
    locale, per_language, answers_of = kwargs.pop("locale"), kwargs.pop("per_language"), kwargs.pop("answers_of")
    if locale or answers_of:
        if not out:
            raise NLAError("--locale and --answers-of need --out")
        if locale and answers_of:
            raise NLAError("--locale and --answers-of build different corpora: give one of them")
        name = "locale" if locale else "topic_prose"
        chats = Path(answers_of) if answers_of else None
        path = build_supplementary(name, Path(out), model=cfg.model, languages=locale, per_language=per_language,
                                   chats=chats)  # fmt: skip
    else:
        kwargs["prompts"] = prompt_file(kwargs["prompts"]) if kwargs["prompts"] else ""
        path = build_default_corpus(out=Path(out) if out else None, **kwargs)
    sys.stdout.write(f"{path}\n")
    return 0


def _sample(doc: Document, width: int = 100) -> str:
    if doc.messages is not None:
        body = "\n".join(f"[{m['role']}] {m['content']}" for m in doc.messages)
    else:
        body = doc.text or ""
    body = body if len(body) <= 600 else body[:600] + " ..."
    lines = [textwrap.fill(line, width, subsequent_indent="    ") for line in body.splitlines() if line.strip()]
    return f"--- {doc.doc_id} ({doc.kind}, {doc.source})\n" + "\n".join(lines)


def run_stats(args: argparse.Namespace) -> int:
    docs = load_corpus(args.spec, limit=args.limit)
    stats = corpus_stats(docs)
    if args.json:
        sys.stdout.write(json.dumps(stats, indent=2) + "\n")
        return 0
    out = [f"{args.spec}: {stats['documents']} documents"]
    out += [f"  {k:<28} {v}" for k, v in stats["by_kind"].items()]
    out.append("by source:")
    out += [f"  {k:<28} {v}" for k, v in stats["by_source"].items()]
    out.append(f"multi-turn chats: {stats['multi_turn_chats']}")
    out.append("words per document (mean / median / min / max):")
    for name, w in [("all", stats["words"]), *stats["words_by_kind"].items()]:
        out.append(f"  {name:<28} {w['mean']} / {w['median']} / {w['min']} / {w['max']}")
    picks: list[Document] = []
    for kind in ("chat", "text"):  # one of each kind first, then in corpus order
        picks += [d for d in docs if d.kind == kind][:1]
    picks += [d for d in docs if d not in picks]
    out += [_sample(d) for d in picks[: max(0, args.samples)]]
    sys.stdout.write("\n".join(out) + "\n")
    return 0
