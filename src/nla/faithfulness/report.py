"""The faithfulness report: headline numbers, plain checks, a terminal summary, ``report.json`` and ``report.html``.

:func:`headline` pulls the numbers every reader wants from the sections; :func:`checks` states, for each,
the rule of thumb it is held to and whether the NLA passes (the rules are ours, written in
docs/faithfulness.md; the numbers are the product). The HTML page is self-contained (inline CSS, inline
SVG plots when matplotlib is installed, otherwise tables only and a note; :mod:`nla.faithfulness.page`) and
escapes every piece of text.
"""

from __future__ import annotations

import math
from typing import Any

from nla.faithfulness.splits import MIN_BASES, fmt_rate, split_checks


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The numbers of the trust section: hit rates, false positives, topic recall, fve with its controls."""
    p, t, h = report.get("planting") or {}, report.get("topic_recall") or {}, report.get("heldout") or {}
    pert = _get(h, "perturbations", "nla") or {}
    dirs = report.get("directions", [])
    return {
        "decoding": _get(report, "meta", "decoding"),
        "directions_valid": f"{sum(d['valid'] for d in dirs)}/{len(dirs)}",
        "bases": p.get("bases"),
        "planted_bases": p.get("planted_bases"),
        "hit_rate@1": _get(p, "hit_rate_mean", "1"),
        "hit_rate@2": _get(p, "hit_rate_mean", "2"),
        "false_positive_any": p.get("false_positive_any"),
        "false_positive_mean": _mean(list((p.get("false_positive_rate") or {}).values())),
        "keyword_free_moved@2": _get(p, "keyword_free", "2", "moved_toward"),
        "keyword_free_moved@2_floor": _get(p, "keyword_free", "2", "moved_toward_floor"),
        "topic_recall": t.get("recall"),
        "topic_recall_floor": t.get("floor"),
        "fve": h.get("fve"),
        **{f"delta_fve[{k}]": v.get("delta") for k, v in pert.items() if k != "as written"},
        "fve_token_lookup": _get(h, "token_lookup", "fve_token_lookup"),
        "fve_token_lookup_2": _get(h, "token_lookup", "fve_token_lookup_2"),
        "next_token_in_top5": _get(h, "next_token", "nla", "in_top5"),
        "next_token_in_top5_floor": _get(h, "next_token", "nla", "in_top5_floor"),
        "quote_grounding": _get(h, "quote_grounding", "nla", "quote_grounding"),
    }


def _mean(xs: list[Any]) -> float | None:
    vals = [float(x) for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def checks(head: dict[str, Any], by_split: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each headline number against a stated rule of thumb: ``{"check", "rule", "value", "passed", "too_few"}``,
    then the per-split checks (:func:`nla.faithfulness.splits.split_checks`). A planting check resting on
    fewer than ``MIN_BASES`` bases (``--quick``) is not judged: ``passed`` None and ``too_few`` True."""

    def row(name: str, rule: str, value: str, passed: bool | None, few: bool = False) -> dict[str, Any]:
        if few:
            return {"check": name, "rule": rule, "value": value + " - too few bases to judge", "passed": None,
                    "too_few": True}  # fmt: skip
        return {"check": name, "rule": rule, "value": value, "passed": passed, "too_few": False}

    def f(x: Any) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    def cmp(ok: Any, *needed: Any) -> bool | None:
        return None if any(n is None for n in needed) else bool(ok)

    h = head
    lk = h["fve_token_lookup"]
    few_planted = (h.get("planted_bases") or 0) < MIN_BASES
    few_bases = (h.get("bases") or 0) < MIN_BASES
    rows = [
        row(
            "names planted concepts",
            "hit rate at alpha = 2 >= 0.5",
            f(h["hit_rate@2"]),
            cmp(h["hit_rate@2"] is not None and h["hit_rate@2"] >= 0.5, h["hit_rate@2"]),
            few_planted and h["hit_rate@2"] is not None,
        ),
        row(
            "rarely names absent concepts",
            "false-positive rate (any concept, alpha = 0) <= 0.1",
            f(h["false_positive_any"]),
            cmp(h["false_positive_any"] is not None and h["false_positive_any"] <= 0.1, h["false_positive_any"]),
            few_bases and h["false_positive_any"] is not None,
        ),
        row(
            "names the topic of real text",
            "topic recall >= floor + 0.2",
            f"{f(h['topic_recall'])} vs {f(h['topic_recall_floor'])}",
            cmp(
                (h["topic_recall"] or 0) >= (h["topic_recall_floor"] or 0) + 0.2,
                h["topic_recall"],
                h["topic_recall_floor"],
            ),
        ),
        row(
            "carries more than the final token",
            "fve > token-lookup fve (final token)",
            f"{f(h['fve'])} vs {f(lk)}",
            cmp((h["fve"] or 0) > (lk or 0), h["fve"], lk),
        ),
        row(
            "states the model's real next tokens",
            "claims in top 5 >= floor + 0.2",
            f"{f(h['next_token_in_top5'])} vs {f(h['next_token_in_top5_floor'])}",
            cmp(
                (h["next_token_in_top5"] or 0) >= (h["next_token_in_top5_floor"] or 0) + 0.2,
                h["next_token_in_top5"],
                h["next_token_in_top5_floor"],
            ),
        ),
        row(
            "quotes what is in the context",
            "quote grounding >= 0.5",
            f(h["quote_grounding"]),
            cmp((h["quote_grounding"] or 0) >= 0.5, h["quote_grounding"]),
        ),
    ]
    return rows + (split_checks(by_split) if by_split else [])


def num(x: Any, fmt: str = "{:.3f}") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return fmt.format(x) if isinstance(x, float) else str(x)


def summary_text(report: dict[str, Any]) -> str:
    """The terminal summary: the headline and the checks, one line each."""
    meta = report.get("meta") or {}
    head = headline(report)
    lines = [
        f"NLA faithfulness report ({meta.get('decoding', '?')} decoding, {meta.get('runtime_s', '?')} s)",
        f"  directions valid (probe AUC >= {report.get('min_auc', 0.9)}): {head['directions_valid']}",
        f"  hit rate: alpha=1 {num(head['hit_rate@1'])}, alpha=2 {num(head['hit_rate@2'])}; "
        f"false positives at alpha=0: any concept {num(head['false_positive_any'])}, "
        f"per concept {num(head['false_positive_mean'])}",
        f"  keyword-free (AR moves toward the planted direction, alpha=2): {num(head['keyword_free_moved@2'])} "
        f"(floor {num(head['keyword_free_moved@2_floor'])})",
        f"  topic recall on held-out text: {num(head['topic_recall'])} (floor {num(head['topic_recall_floor'])})",
    ]
    for split, st in (report.get("by_split") or {}).items():
        a1 = "1" if "1" in st["hit_rate"] else next(iter(st["hit_rate"]), None)
        lines += [
            f"  {split} concepts ({len(st['directions_valid'])}/{len(st['concepts'])} directions valid):",
            f"    hit rate alpha={a1}: {fmt_rate(st['hit_rate'].get(a1) if a1 else None)}; "
            f"floor (named unplanted) {fmt_rate(st['hit_floor'])}",
            "    wrong-concept rate: "
            + "; ".join(f"alpha={a} {fmt_rate(r)}" for a, r in st["wrong_concept_rate"].items()),
            f"    false positives at alpha=0: any concept {fmt_rate(st['false_positive_any'])}, "
            f"per concept {fmt_rate(st['false_positive_pairs'])}",
            f"    topic recall {fmt_rate(st['topic_recall'])}; floor {fmt_rate(st['topic_recall_floor'])}",
        ]
    h = report.get("heldout") or {}
    if "skipped" in h:
        lines.append(f"  held-out rows: skipped ({h['skipped']})")
    else:
        deltas = ", ".join(f"{k[10:-1]} {num(v, '{:+.3f}')}" for k, v in head.items() if k.startswith("delta_fve["))
        lines += [
            f"  held-out fve {num(head['fve'], '{:+.3f}')} vs token lookup: final token "
            f"{num(head['fve_token_lookup'], '{:+.3f}')}, last two {num(head['fve_token_lookup_2'], '{:+.3f}')}",
            f"  delta fve: {deltas}",
            f"  next-token claims in the real top 5: {num(head['next_token_in_top5'])} "
            f"(floor {num(head['next_token_in_top5_floor'])}); quote grounding {num(head['quote_grounding'])}",
        ]
    lines.append("  checks:")
    for c in checks(head, report.get("by_split")):
        mark = {True: "pass", False: "FAIL", None: "n/a "}[c["passed"]]
        if c.get("too_few") and c["passed"] is None:
            mark = "too few"
        lines.append(f"    [{mark}] {c['check']}: {c['value']} ({c['rule']})")
    return "\n".join(lines)


def jsonable(x: Any) -> Any:
    """NaN and inf become null (JSON has no NaN): a rate over nothing is n/a."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


__all__ = ["checks", "headline", "jsonable", "num", "summary_text"]
