"""Per-split rates with counts and 95% intervals: covered vs novel concepts, hits, wrong concepts, false positives.

The shipped concept set has two splits (:data:`nla.faithfulness.concepts.SPLITS`): *covered* concepts, which
the teacher's taxonomy largely names, and *novel* ones, which no training resource names
(:mod:`nla.faithfulness.novelty`). An NLA that can only classify into a fixed list passes the first and fails
the second, so every rate here is given per split, as a pooled count ``k/n`` with its Wilson 95% interval:

- **hit rate** at each alpha: planted explanations (one per concept and planted base) that name the planted
  concept; its floor is the share of unplanted bases whose explanation names that same concept.
- **wrong-concept rate** at each alpha: planted explanations that name ANOTHER concept of the suite (any
  split); at alpha = 0 that is the false-positive rate. Its floor is the alpha = 0 rate.
- **claim precision** at each alpha: of the planted explanations that name any concept of the suite, the
  share that name the planted one and no other. What an auditor reads off a topic claim: an NLA that names
  little but names it right scores high here and low on hit rate.
- **false positives**: unplanted bases whose explanation names any concept of the split (and, finer, per
  concept-and-base pair).
- **topic recall**: held-out on-topic texts of the split whose explanation names their concept, beside the
  permutation floor (the same explanations scored against the split's other concepts).

Pure functions of the report's ``planting`` and ``topic_recall`` sections and the concept -> split map.
"""

from __future__ import annotations

import math
from typing import Any

Z95 = 1.959963984540054
MIN_BASES, MIN_COUNT = 5, 20  # a check resting on fewer distinct bases or explanations says "too few"


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of ``k`` successes in ``n`` trials; ``(0, 1)`` when ``n == 0``."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def rate(k: int, n: int, *, bases: int | None = None) -> dict[str, Any]:
    """``{"rate", "k", "n", "ci95", "bases"}``; rate None when n == 0."""
    lo, hi = wilson(k, n)
    return {"rate": k / n if n else None, "k": k, "n": n, "ci95": [lo, hi], "bases": bases}


def too_few(r: dict[str, Any] | None) -> bool:
    """Whether a rate rests on too few explanations or distinct bases to pass or fail a check."""
    if not r or not r.get("n"):
        return True
    return r["n"] < MIN_COUNT or (r.get("bases") is not None and r["bases"] < MIN_BASES)


def fmt_rate(r: dict[str, Any] | None) -> str:
    """``0.40 (24/60, 95% CI 0.28-0.53)``; ``n/a (0/0)`` for an empty rate."""
    if not r or r.get("rate") is None:
        return "n/a (0/0)"
    lo, hi = r["ci95"]
    return f"{r['rate']:.2f} ({r['k']}/{r['n']}, 95% CI {lo:.2f}-{hi:.2f})"


def split_names(split_of: dict[str, str]) -> list[str]:
    """The splits present, shipped order first (``covered``, ``novel``), then others; ``""`` is ``all``."""
    order = {"covered": 0, "novel": 1}
    return sorted({s or "all" for s in split_of.values()}, key=lambda s: (order.get(s, 2), s))


def split_stats(planting: dict[str, Any], topic: dict[str, Any], split_of: dict[str, str]) -> dict[str, Any]:
    """Per split: hit, wrong-concept and false-positive rates at every alpha, topic recall; each a :func:`rate`."""
    named = planting.get("named") or {}
    base_named: list[list[str]] = planting.get("base_named") or []
    alphas = [f"{float(a):g}" for a in planting.get("alphas", [])]
    n_planted = int(planting.get("planted_bases") or 0)
    n_bases = len(base_named)
    out: dict[str, Any] = {}
    for split in split_names(split_of):
        members = [c for c, s in split_of.items() if (s or "all") == split]
        valid = [c for c in members if c in named]
        fp_any = sum(any(c in nm for c in members) for nm in base_named)
        fp_pairs = sum(c in nm for nm in base_named for c in members)
        hit: dict[str, Any] = {}
        precision: dict[str, Any] = {}
        wrong: dict[str, Any] = {"0": rate(fp_any, n_bases, bases=n_bases)}
        hit_floor = rate(sum(c in nm for nm in base_named for c in valid), n_bases * len(valid), bases=n_bases)
        for a in alphas:
            if a == "0":
                continue
            rows = [(c, nm) for c in valid for nm in named[c].get(a, [])]
            hit[a] = rate(sum(c in nm for c, nm in rows), len(rows), bases=n_planted)
            wrong[a] = rate(sum(any(o != c for o in nm) for c, nm in rows), len(rows), bases=n_planted)
            claims = [(c, nm) for c, nm in rows if nm]
            precision[a] = rate(sum(list(nm) == [c] for c, nm in claims), len(claims), bases=n_planted)
        texts = [e for e in topic.get("explanations", []) if e.get("concept") in members]
        right = sum(e["concept"] in e.get("named", []) for e in texts)
        others = [(e, o) for e in texts for o in members if o != e["concept"]]
        floor = sum(o in e.get("named", []) for e, o in others)
        out[split] = {
            "concepts": members,
            "directions_valid": valid,
            "hit_rate": hit,
            "hit_floor": hit_floor,
            "wrong_concept_rate": wrong,
            "claim_precision": precision,
            "false_positive_any": rate(fp_any, n_bases, bases=n_bases),
            "false_positive_pairs": rate(fp_pairs, n_bases * len(members), bases=n_bases),
            "topic_recall": rate(right, len(texts), bases=len(texts)),
            "topic_recall_floor": rate(floor, len(others), bases=len(texts)),
        }
    return out


# the goals for the split checks (docs/faithfulness.md): hit rate at alpha = 1 by split, the rest for all
HIT_GOAL = {"covered": 0.9, "novel": 0.8}
HIT_GOAL_OTHER, WRONG_GOAL, FP_GOAL, RECALL_GOAL = 0.8, 0.1, 0.02, 0.55


def split_checks(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per split and rule: ``{"check", "rule", "value", "passed", "too_few"}`` (``passed`` None when
    the rate rests on too few bases or explanations, or is missing)."""
    rows = []
    for split, st in stats.items():
        goal = HIT_GOAL.get(split, HIT_GOAL_OTHER)
        tests = [
            ("names planted concepts", f"hit rate at alpha = 1 >= {goal:.2f}", st["hit_rate"].get("1"), ">=", goal),
            ("names no other concept", f"wrong-concept rate at alpha = 1 <= {WRONG_GOAL:.2f}",
             st["wrong_concept_rate"].get("1"), "<=", WRONG_GOAL),
            ("rarely names absent concepts", f"false positives (alpha = 0, any concept) <= {FP_GOAL:.2f}",
             st["false_positive_any"], "<=", FP_GOAL),
            ("names the topic of real text", f"topic recall >= {RECALL_GOAL:.2f}", st["topic_recall"], ">=",
             RECALL_GOAL),
        ]  # fmt: skip
        for name, rule, r, op, bound in tests:
            few = too_few(r)
            value = fmt_rate(r) + (" - too few bases to judge" if few and r and r.get("n") else "")
            passed = None
            if not few and r and r["rate"] is not None:
                passed = r["rate"] >= bound if op == ">=" else r["rate"] <= bound
            rows.append({"check": f"{split}: {name}", "rule": rule, "value": value, "passed": passed, "too_few": few})
    return rows


__all__ = ["fmt_rate", "rate", "split_checks", "split_stats", "too_few", "wilson"]
