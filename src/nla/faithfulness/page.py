"""The report as one self-contained HTML page: inline CSS, inline SVG plots (when matplotlib is installed),
tables for every number, and every piece of text escaped."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from nla.common.paths import atomic_write_text
from nla.faithfulness import plots
from nla.faithfulness.report import checks, headline, jsonable, num
from nla.faithfulness.splits import fmt_rate

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px} h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd} h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0;font-size:13px} td,th{border:1px solid #ddd;padding:3px 7px}
td{vertical-align:top;max-width:460px;overflow-wrap:anywhere}
th{background:#f4f4f4} td.n{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#060} .fail{color:#b00;font-weight:600} .na{color:#777}
pre{white-space:pre-wrap;background:#f6f6f6;padding:6px;border-radius:4px;font-size:12px;margin:2px 0}
.note{color:#555;font-size:13px} svg{max-width:100%;height:auto}
"""
_VERDICT = {True: ("pass", "pass"), False: ("fail", "FAIL"), None: ("na", "n/a")}


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _signed(x: Any) -> str:
    return num(x, "{:+.3f}")


def _td(c: Any) -> str:
    if isinstance(c, (int, float)) and not isinstance(c, bool) or c is None:
        return f'<td class="n">{_e(num(c))}</td>'
    return f"<td>{_e(c)}</td>"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_td(c) for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _p(text: str, cls: str = "") -> str:
    return f'<p class="{cls}">{text}</p>' if cls else f"<p>{text}</p>"


def _breakdowns(breakdown: dict[str, Any]) -> str:
    """One table per grouping: metric rows, group columns, each cell ``value (n=..)``."""
    parts = []
    for kind, metrics in (breakdown or {}).items():
        groups = list(dict.fromkeys(g for m in metrics.values() for g in m))
        rows = [[name] + [_cell(m.get(g)) for g in groups] for name, m in metrics.items()]
        parts.append(f"<h3>split by {_e(kind)}</h3>" + _table(["metric"] + groups, rows))
    return "".join(parts)


def _cell(x: Any) -> str:
    return "" if not x else f"{num(x.get('fve', x.get('value')))} (n={x.get('n')})"


def render_html(report: dict[str, Any], *, plots_on: bool = True) -> str:
    meta = report.get("meta") or {}
    draw = plots_on and plots.available()
    out = ["<h1>NLA faithfulness report</h1>", _meta(meta)]
    if not draw:
        out.append(_p('Plots are off: <code>pip install "nla[faithfulness]"</code> (matplotlib) draws them.', "note"))
    head = headline(report)
    rows = []
    for c in checks(head, report.get("by_split")):
        cls, word = _VERDICT[c["passed"]]
        if c.get("too_few") and c["passed"] is None:
            word = "too few"
        cells = "".join(f"<td>{_e(c[k])}</td>" for k in ("check", "rule", "value"))
        rows.append(f'<tr>{cells}<td class="{cls}">{word}</td></tr>')
    out.append("<h2>Checks</h2><table><tr><th>check</th><th>rule of thumb</th><th>value</th><th>result</th></tr>")
    out.append("".join(rows) + "</table>")
    out.append("<h3>Headline numbers</h3>" + _table(["number", "value"], [[k, v] for k, v in head.items()]))
    out.append(_directions(report))
    out.append(_splits(report.get("by_split") or {}))
    out.append(_planting(report.get("planting") or {}, draw))
    out.append(_topics(report.get("topic_recall") or {}))
    out.append(_heldout(report.get("heldout") or {}, draw))
    out.append("<h2>Configuration</h2><pre>" + _e(json.dumps(meta.get("config", {}), indent=1)) + "</pre>")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>NLA faithfulness report</title>'
        f"<style>{_CSS}</style></head><body>{''.join(out)}</body></html>\n"
    )


def _splits(by_split: dict[str, Any]) -> str:
    if not by_split:
        return ""
    out = [
        "<h2>Covered and novel concepts</h2>",
        _p(
            "Covered concepts are ones the teacher's taxonomy largely names; novel concepts are named by no training "
            "resource (checked by a test). Each rate is pooled over the split's concepts as k/n with its Wilson 95% "
            "interval. Wrong-concept rate: planted explanations that name another concept of the suite (at alpha = 0: "
            "unplanted bases naming a concept of the split).",
            "note",
        ),
    ]
    for split, st in by_split.items():
        rows = [[f"hit rate, alpha={a}", fmt_rate(r)] for a, r in st["hit_rate"].items()]
        rows.append(["hit floor (concept named unplanted)", fmt_rate(st["hit_floor"])])
        rows += [[f"wrong-concept rate, alpha={a}", fmt_rate(r)] for a, r in st["wrong_concept_rate"].items()]
        rows += [
            [f"claim precision (names the planted concept alone, of those naming any), alpha={a}", fmt_rate(r)]
            for a, r in (st.get("claim_precision") or {}).items()
        ]
        rows += [
            ["false positives, any concept of the split", fmt_rate(st["false_positive_any"])],
            ["false positives, per concept and base", fmt_rate(st["false_positive_pairs"])],
            ["topic recall on held-out text", fmt_rate(st["topic_recall"])],
            ["topic recall floor (other concepts' keywords)", fmt_rate(st["topic_recall_floor"])],
        ]
        title = f"{split}: {len(st['directions_valid'])}/{len(st['concepts'])} directions valid"
        out.append(f"<h3>{_e(title)}</h3>" + _table(["rate", "value (k/n, 95% CI)"], rows))
    return "".join(out)


def _meta(m: dict[str, Any]) -> str:
    return _p(
        f"AV {_e(m.get('av'))}; AR {_e(m.get('ar'))}; target {_e(m.get('target'))}, layer {_e(m.get('layer'))}; "
        f"decoding: <b>{_e(m.get('decoding'))}</b>; B = {_e(num(m.get('baseline'), '{:.4f}'))} "
        f"({_e(m.get('baseline_source'))}); runtime {_e(m.get('runtime_s'))} s, "
        f"{_e(m.get('explanations_generated'))} explanations written, {_e(m.get('torch_threads'))} torch thread(s)."
        f"<br>Command: <code>{_e(m.get('command'))}</code>",
        "note",
    )


def _directions(report: dict[str, Any]) -> str:
    rows = [
        [d["concept"], d["auc"], d["norm"], "yes" if d["valid"] else "SKIPPED"] for d in report.get("directions", [])
    ]
    note = (
        f"Difference of mean layer-L activations, on-topic minus neutral prompts (pool: {_e(report.get('pool'))}; "
        "position 0 is never used); the AUC of the projection on held-out prompts. Directions below "
        f"{_e(report.get('min_auc'))} are reported and skipped."
    )
    return "<h2>Concept directions</h2>" + _p(note, "note") + _table(["concept", "held-out AUC", "norm", "used"], rows)


def _planting(p: dict[str, Any], draw: bool) -> str:
    if not p:
        return ""
    alphas = [f"{a:g}" for a in p.get("alphas", [])]
    cols = [f"alpha={a}" for a in alphas]
    out = ["<h2>Planted directions</h2>"]
    out.append(
        _p(
            f"Each direction is planted into {_e(p.get('planted_bases'))} held-out neutral activations (last token; "
            "prose and a chat's user turn in turn) as v + alpha |v| unit(d). alpha = 0: the false-positive rate over "
            f"{_e(p.get('bases'))} unplanted bases. A hit: the explanation contains one of the concept's keywords.",
            "note",
        )
    )
    if draw:
        out.append(plots.hit_rate_plot(p))
    hit = p.get("hit_rate") or {}
    out.append(_table(["concept"] + cols, [[c] + [v.get(a) for a in alphas] for c, v in hit.items()]))
    out.append(
        _table(["mean over concepts"] + cols, [["hit rate"] + [(p.get("hit_rate_mean") or {}).get(a) for a in alphas]])
    )
    fpr = p.get("false_positive_rate") or {}
    out.append(_p(f"False-positive rate at alpha = 0, any concept: <b>{_e(num(p.get('false_positive_any')))}</b>"))
    out.append(_table(list(fpr), [list(fpr.values())]))
    cross = p.get("cross_talk") or {}
    show = "2" if "2" in cross else next(iter(cross), None)
    if show is not None:
        out.append(f"<h3>Cross-talk at alpha = {_e(show)} (row: planted; column: named)</h3>")
        if draw:
            out.append(plots.confusion_plot(p, show))
        table = cross[show]
        named = list(next(iter(table.values())))
        out.append(_table(["planted \\ named"] + named, [[r] + [table[r].get(c) for c in named] for r in table]))
    sites = p.get("hit_sites") or {}
    site_rows = [[k, v] for k, v in (sites.get("part") or {}).items()] + [
        [k, v] for k, v in (sites.get("quoted") or {}).items()
    ]
    out.append(
        "<h3>Which part of the explanation carries the hits</h3>" + _table(["part", "keyword matches"], site_rows)
    )
    out.append(_keyword_free(p, alphas, cols))
    raw = [
        [r["concept"], "yes" if r["names_it"] else "no", ", ".join(r["named"]), r["explanation"]]
        for r in p.get("raw_directions", [])
    ]
    out.append(
        "<h3>Explanations of the raw directions</h3>" + _table(["concept", "names it", "named", "explanation"], raw)
    )
    shown = [a for a in alphas if a != "0"]
    ex = [[c] + [v.get(a, "") for a in shown] for c, v in (p.get("examples") or {}).items()]
    out.append("<h3>Examples (first planted base)</h3>" + _table(["concept"] + [f"alpha={a}" for a in shown], ex))
    bases = list(zip(p.get("base_texts", []), p.get("base_explanations", []), strict=False))
    out.append("<h3>Unplanted bases</h3>" + _table(["base text (tail)", "explanation"], [list(b) for b in bases]))
    return "".join(out) + _breakdowns(p.get("breakdown") or {})


def _keyword_free(p: dict[str, Any], alphas: list[str], cols: list[str]) -> str:
    kf = p.get("keyword_free") or {}
    if not kf:
        return ""
    keys = ("moved_toward", "moved_toward_floor", "delta_cosine", "delta_cosine_floor")
    out = [
        "<h3>Keyword-free: does the AR's reading of the explanation move toward the planted direction?</h3>",
        _p(
            "moved: the share of planted explanations whose reconstruction has a higher cosine with unit(d) than "
            "the unplanted base's has; floor: the same toward the other concepts' directions.",
            "note",
        ),
        _table(
            ["alpha", "moved toward d", "floor", "mean delta cos", "floor"],
            [[a] + [v[k] for k in keys] for a, v in kf.items()],
        ),
        "<h3>The AR's view: cosine of the reconstruction with unit(d) (the planted vector's own cosine)</h3>",
    ]
    view = p.get("ar_view") or {}
    out.append(_table(["concept"] + cols, [[c] + [_view(v.get(a)) for a in alphas] for c, v in view.items()]))
    return "".join(out)


def _view(v: Any) -> str:
    if not v:
        return ""
    return num(v.get("ar_cosine")) + (f" ({num(v['planted_cosine'])})" if "planted_cosine" in v else "")


def _topics(t: dict[str, Any]) -> str:
    if not t:
        return ""
    per = [[k, v["recall"], v["floor"], v["example"]] for k, v in (t.get("per_concept") or {}).items()]
    return (
        "<h2>Topic recall on held-out text</h2>"
        + _p(
            f"Explanations of held-out on-topic texts at their last token that name the right concept: "
            f"<b>{_e(num(t.get('recall')))}</b>; floor (the same explanations against the other concepts' keywords): "
            f"{_e(num(t.get('floor')))}; n = {_e(t.get('n'))}."
        )
        + _table(["concept", "recall", "floor", "example"], per)
        + _breakdowns(t.get("breakdown") or {})
    )


def _heldout(h: dict[str, Any], draw: bool) -> str:
    out = ["<h2>Held-out rows: what carries the score</h2>"]
    if "skipped" in h:
        return "".join(out) + _p(f"Skipped: {_e(h['skipped'])}.")
    out.append(_p(f"{_e(h.get('rows'))} held-out rows, B = {_e(num(h.get('baseline'), '{:.4f}'))}.", "note"))
    if draw:
        out.append(plots.delta_fve_plot(h))
    pert = h.get("perturbations") or {}
    names = list(next(iter(pert.values()), {}))
    rows = [[who] + [f"{_signed(s[n]['fve'])} / {_signed(s[n]['delta'])}" for n in names] for who, s in pert.items()]
    out.append(_table(["explanations"] + [f"{n}: fve / delta" for n in names], rows))
    lk = h.get("token_lookup")
    if lk:
        out.append(
            _p(
                "Token-lookup control (no model; each row predicted by the mean training vector of its final token): "
                f"fve <b>{_e(_signed(lk['fve_token_lookup']))}</b>, last two tokens "
                f"{_e(_signed(lk['fve_token_lookup_2']))} (final token seen in training for "
                f"{_e(num(lk['token_lookup_seen'], '{:.0%}'))} of the rows; {_e(lk['train_rows'])} training rows), "
                f"against the NLA's <b>{_e(_signed(h.get('fve')))}</b> on the same rows."
            )
        )
    keys = ("with_claims", "in_top5", "in_top5_floor", "top1", "top1_floor", "abs_error_pp", "abs_error_pp_floor")
    header = [
        "explanations",
        "rows with claims",
        "claims in top 5",
        "floor",
        "first = top 1",
        "floor",
        "|stated - real| pp",
    ]
    nt = [[k] + [v[c] for c in keys] for k, v in (h.get("next_token") or {}).items()]
    out.append("<h3>Next-token claims against the target's real distribution</h3>" + _table(header + ["floor"], nt))
    qg = [
        [k, v.get("quote_grounding"), v.get("quotes_per_explanation")]
        for k, v in (h.get("quote_grounding") or {}).items()
    ]
    out.append("<h3>Quote grounding</h3>" + _table(["explanations", "quotes found in the context", "quotes each"], qg))
    out.append(_breakdowns(h.get("breakdown") or {}))
    examples = "".join(f"<pre>{_e(json.dumps(x, indent=1, ensure_ascii=False))}</pre>" for x in h.get("examples", []))
    return "".join(out) + "<h3>Examples</h3>" + examples


def write_report(report: dict[str, Any], out: Path, *, plots: bool = True) -> None:
    """``report.json`` (the headline and checks included) and ``report.html`` under ``out``, atomically."""
    report["headline"] = headline(report)
    report["checks"] = checks(report["headline"], report.get("by_split"))
    text = json.dumps(jsonable(report), indent=1, ensure_ascii=False, allow_nan=False)
    atomic_write_text(out / "report.json", text + "\n")
    atomic_write_text(out / "report.html", render_html(report, plots_on=plots))


__all__ = ["render_html", "write_report"]
