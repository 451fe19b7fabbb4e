"""``nla audit``: explain many transcripts into a searchable SQLite store, search it, and flag positions.

    nla audit chats.jsonl --out audit.db                  # every assistant token of every chat (greedy)
    nla audit chats.jsonl --out audit.db --sample 4 --limit 100   # 4 random tokens of 100 chats
    nla audit logs.jsonl --out audit.db --engine ray      # the same on Ray Data (--ray-address for a cluster)
    nla audit search "secret OR password" --db audit.db --min-margin 0.02
    nla audit flags --db audit.db --rules rules.yaml

``nla audit DATA`` is short for ``nla audit run DATA``. DATA: JSONL (``text`` or chat ``messages`` per line;
malformed lines are counted and skipped), parquet, a folder of .txt, or ``hf:NAME``. Rerunning continues:
killed jobs resume without losing or repeating rows, and documents appended to a JSONL are audited.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import Any

from nla.common.config import add_config_args, config_from_args

NAME = "audit"
HELP = "Audit many transcripts into a searchable store (run), search it, and flag positions."
COMMANDS = ("run", "search", "flags")


class _AnyName:
    """What argparse checks the first word against: anything (an unknown word is DATA of ``run``)."""

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self) -> Any:
        return iter(COMMANDS)


class _DefaultRun(argparse._SubParsersAction):
    """Sub-commands where an unknown first word is DATA of the default ``run`` command."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.choices = _AnyName()

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        if values and values[0] not in self._name_parser_map:
            values = ["run", *values]
        super().__call__(parser, namespace, values, option_string)


def register(sub: argparse._SubParsersAction) -> None:
    from nla.audit.config import AuditConfig

    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(NAME, help=HELP, description=__doc__, formatter_class=fmt)
    asub = p.add_subparsers(dest="audit_command", required=True, metavar="{DATA,search,flags}", action=_DefaultRun)
    r = asub.add_parser("run", help="Audit DATA into --out (the default: `nla audit DATA`).", description=__doc__)
    r.add_argument("data", help="JSONL, parquet, a folder of .txt, or hf:NAME.")
    add_config_args(r, AuditConfig)
    r.set_defaults(func=run_audit)
    s = asub.add_parser("search", help="Full-text search of the explanations (FTS5 syntax, ranked).")
    s.add_argument("query", help='FTS5 query: words, "a phrase", a OR b, prefix*, NOT.')
    s.add_argument("--db", default="audit.db", help="The audit database (default: %(default)s).")
    s.add_argument("--run", type=int, default=None, help="Run id (default: the latest).")
    s.add_argument("--min-margin", type=float, default=None, help="Only explanations beating their control by this.")
    s.add_argument("--worth", action="store_true", help="Only explanations with the verdict 'worth reading'.")
    s.add_argument("--role", default=None, help="Only tokens of this role (assistant, user, system, text).")
    s.add_argument("--doc", default=None, help="Only this document id.")
    s.add_argument("--limit", type=int, default=20, help="Most hits shown (default: %(default)s).")
    s.add_argument("--json", action="store_true", help="Print the hits as JSON.")
    s.set_defaults(func=run_search)
    f = asub.add_parser("flags", help="Apply a rules file of detectors (or show the stored flags).")
    f.add_argument("--db", default="audit.db", help="The audit database (default: %(default)s).")
    f.add_argument("--rules", default=None, help="Rules YAML (see docs/audit.md); without it: the stored flags.")
    f.add_argument("--run", type=int, default=None, help="Run id (default: the latest).")
    f.add_argument("--json", action="store_true", help="Print the summary as JSON.")
    f.set_defaults(func=run_flags)


def run_audit(args: argparse.Namespace) -> int:
    from nla.audit.config import AuditConfig, check_config, check_data

    cfg = config_from_args(AuditConfig, args)
    check_config(cfg)  # before the job's heavy imports: a bad option or a missing file fails at once
    check_data(args.data)
    from nla.audit.job import audit
    from nla.cli import print_json

    summary = audit(args.data, cfg)
    print_json(summary)
    return 0


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def format_hits(hits: list[dict[str, Any]], width: int = 100) -> str:
    from nla.core.text import readable
    from nla.explain.trust import verdict

    if not hits:
        return "no matches\n"
    out = []
    for n, h in enumerate(hits, start=1):
        scores = "" if h["cosine"] is None else f"cos {h['cosine']:+.3f}"
        if h["margin"] is not None:
            scores += f" (control {h['control_cosine']:+.3f}, margin {h['margin']:+.3f})"
        if h["fve"] is not None:
            scores += f" fve {h['fve']:+.3f}"
        if h.get("lookup_fve") is not None:
            scores += f" lookup {h['lookup_fve']:+.3f}"
        if h.get("worth") is not None:
            scores += f" [{verdict(bool(h['worth']))}]"
        turn = "" if h["turn"] is None else f" turn {h['turn']}"
        out.append(f"[{n}] {h['doc_id']}{turn} ({h['role']}) token {h['idx']} {readable(h['token'])!r}  {scores}")
        before, after = readable(h["before"])[-60:], readable(h["after"])[:40]
        out.append(f"    ...{before}[[{readable(h['token'])}]]{after}...")
        text = h["explanation"] if h["explanation"] is not None else "(no closed tag) " + _one_line(h["raw"])
        out += textwrap.wrap(_one_line(text), width, initial_indent="    ", subsequent_indent="    ")
    return "\n".join(out) + "\n"


def run_search(args: argparse.Namespace) -> int:
    from nla.audit.search import search

    hits = search(
        args.db,
        args.query,
        run=args.run,
        min_margin=args.min_margin,
        role=args.role,
        doc=args.doc,
        limit=args.limit,
        worth=args.worth,
    )
    if args.json:
        sys.stdout.write(json.dumps(hits, indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(format_hits(hits))
    return 0


def format_flags(summary: dict[str, Any]) -> str:
    if not summary["detectors"]:
        return f"run {summary['run']}: no flags stored (run `nla audit flags --rules rules.yaml`)\n"
    out = [f"run {summary['run']}: detectors"]
    for d in summary["detectors"]:
        extra = ""
        if d["kind"] == "direction":
            extra = f"  threshold {d['threshold']:+.3f} at fpr {d['fpr']} on {d['reference']} ({d['reference_size']})"
        out.append(f"  {d['name']:<24} {d['kind']:<9} {d['flagged']:>6} flagged{extra}")
    for p in summary["disagreements"]:
        out.append(
            f"{p['text']} vs {p['direction']}: both {p['both']}, text only {p['text_only']} "
            f"(the explanation says it, the activation does not), direction only {p['direction_only']}"
        )
        for e in p["examples"]:
            score = "" if e["score"] is None else f" score {e['score']:+.3f}"
            out.append(f"    {e['agreement']:<15} {e['doc_id']} token {e['idx']} {e['token']!r}{score}")
    out.append("per document:")
    for d in summary["documents"]:
        out.append(f"  {d['doc_id']:<24} " + ", ".join(f"{k} {v}" for k, v in sorted(d["flags"].items())))
    return "\n".join(out) + "\n"


def run_flags(args: argparse.Namespace) -> int:
    from nla.audit.flags import flag_summary, load_rules
    from nla.audit.flags import run_flags as apply_rules
    from nla.audit.store import Store

    rules = load_rules(args.rules) if args.rules else None
    with Store(args.db) as store:
        if rules is not None:
            store.lock_writer()
            summary = apply_rules(store, rules, run=args.run)
        else:
            summary = flag_summary(store, args.run)
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(format_flags(summary))
    return 0
