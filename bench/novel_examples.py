"""Example explanations of novel-concept texts, side by side from two `nla faithfulness` reports (before, after).

The reports' topic-recall part explains the last token of each held-out on-topic text (the first
``topic_texts`` held-out texts of every concept, alternately as prose and as a chat's user turn, in the
concept set's order). This script takes the FIRST held-out text of the first ``--n`` concepts of the novel
split, in the order of ``nla/resources/concepts/novel.yaml`` (no choosing), and prints a Markdown table:
the text, and each report's topic line with whether it names the text's concept (and which concept it
names instead, if any). No model runs.

    python bench/novel_examples.py docs/faithfulness/novel_before.json ~/nla-runs/smollm2/faithfulness/greedy.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def rows_by_concept(report: dict) -> dict[str, list[dict]]:
    """The topic-recall explanations of a report, per concept, in the order they were explained."""
    out: dict[str, list[dict]] = {}
    for row in report["topic_recall"]["explanations"]:
        out.setdefault(row["concept"], []).append(row)
    return out


def topic_part(explanation: str) -> str:
    """The explanation's 'Topic: ...' line up to 'Language:' (what names a concept), else its first 120 chars."""
    m = re.search(r"Topic:.*?(?=Language:|Setting:|$)", explanation, flags=re.S)
    return " ".join((m.group(0) if m else explanation[:120]).split())


def cell(row: dict, concept: str) -> str:
    named = row.get("named") or []
    verdict = "names it" if concept in named else (f"names {', '.join(named)} instead" if named else "names none")
    return f"{topic_part(row['explanation'])} ({verdict})".replace("|", "\\|")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", type=Path, help="report JSON of the NLA before")
    ap.add_argument("after", type=Path, help="report JSON of the NLA after")
    ap.add_argument("--n", type=int, default=10, help="How many novel concepts (the first N in novel.yaml).")
    args = ap.parse_args()
    from nla.faithfulness.concepts import load_concepts

    concepts = load_concepts(splits=["novel"]).concepts[: args.n]
    before, after = (rows_by_concept(json.loads(p.read_text(encoding="utf-8"))) for p in (args.before, args.after))
    print("| concept | held-out text (its last token explained) | before | after |")
    print("|---|---|---|---|")
    hits = [0, 0]
    for c in concepts:
        if c.name not in before or c.name not in after:
            raise SystemExit(f"concept {c.name!r} is missing from a report (was it run with --splits novel?)")
        b, a = before[c.name][0], after[c.name][0]
        hits[0] += c.name in (b.get("named") or [])
        hits[1] += c.name in (a.get("named") or [])
        print(f"| {c.name} | {c.heldout[0]} | {cell(b, c.name)} | {cell(a, c.name)} |")
    print(f"\nnamed: before {hits[0]}/{len(concepts)}, after {hits[1]}/{len(concepts)}")


if __name__ == "__main__":
    main()
