"""Show explanations: a terminal table, a JSONL file (one record per token) and a self-contained HTML page.

Every record shows its round-trip score, the score of an EMPTY explanation of the same token (``ctrl``:
as fve when the baseline is known, else as cosine), the score of the token lookup (``lookup``: the
token's mean training activation) and the plain verdict of :mod:`nla.explain.trust` (``worth reading``:
above zero fve and above the lookup / ``not worth it``). Position 0 is marked ``(sink)``: the first
token of any sequence is an attention sink, an outlier activation that says little about the text.

The HTML page has no external URLs (inline CSS and JS). Each token of the text is coloured by its
round-trip score (``fve`` when a baseline is known, else ``cosine``; below 0 is the darkest red, and the
legend says so); hovering a token shows its explanation and numbers, clicking pins the full record (raw
answer, samples) in a side panel; an overview table lists every explanation. Tokens the user never typed
(a BOS token, chat-template headers, a default system prompt) are hidden unless explained, with a switch
to show them. Every piece of user text is HTML-escaped. All writes are atomic (temporary file + rename).

Records are the dataclasses of :mod:`nla.explain.api` (``TokenExplanation``, ``VectorExplanation``), or
any dataclass with the same field names.
"""

from __future__ import annotations

import dataclasses
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nla.common.paths import atomic_write_text
from nla.explain.trust import COS_MARGIN, FVE_MARGIN, LOOKUP_MARGIN, control_word, verdict


def _get(rec: Any, name: str, default: Any = None) -> Any:
    return getattr(rec, name, default)


def _num(x: float | None, fmt: str = "{:+.3f}") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _show_token(tok: str) -> str:
    return repr(tok)[1:-1] if tok else "''"


def _control(rec: Any) -> float | None:
    """The empty-explanation control in the record's main metric: fve when known, else cosine."""
    ctrl = _get(rec, "control_fve")
    return ctrl if ctrl is not None or _get(rec, "fve") is not None else _get(rec, "control_cosine")


def is_sink(rec: Any) -> bool:
    """Position 0 of a text: the attention sink."""
    return _get(rec, "position") == 0


def _verdict(rec: Any) -> str:
    return verdict(_get(rec, "worth_reading")) + (" (sink)" if is_sink(rec) else "")


def _label(rec: Any) -> tuple[str, str]:
    """(index column, label column) for a token record or a vector record."""
    if hasattr(rec, "position"):
        return str(rec.position), _show_token(_get(rec, "token", ""))
    return str(_get(rec, "index", "")), _num(_get(rec, "norm"), "{:.3g}")


def _explanation_cell(rec: Any) -> str:
    text = _get(rec, "explanation")
    if text is None:
        raw = (_get(rec, "raw") or "").strip().replace("\n", " ")
        text = f"[no explanation tag] {raw[:120]}"
    if _get(rec, "cjk"):
        text = "[CJK: injection failed?] " + text
    return " ".join(str(text).split())


def table_rows(records: Sequence[Any]) -> tuple[list[str], list[list[str]]]:
    """Header and string cells of the table (shared by the rich and the plain renderer)."""
    is_token = bool(records) and hasattr(records[0], "position")
    header = ["pos", "token"] if is_token else ["#", "norm"]
    header += ["fve", "cos", "ctrl", "lookup", "verdict", "explanation"]
    rows = []
    for rec in records:
        idx, label = _label(rec)
        cells = [_num(_get(rec, "fve")), _num(_get(rec, "cosine")), _num(_control(rec)), _num(_get(rec, "lookup_fve"))]
        cells.append(_verdict(rec))
        rows.append([idx, label, *cells, _explanation_cell(rec)])
    return header, rows


def legend_lines(records: Sequence[Any]) -> list[str]:
    """What the ctrl and verdict columns mean (printed under the table)."""
    if not records or all(_get(r, "cosine") is None for r in records):
        return []
    fve = any(_get(r, "fve") is not None for r in records)
    worth = sum(_get(r, "worth_reading") is True for r in records)
    has_lookup = any(_get(r, "lookup_fve") is not None for r in records)
    above = f"+{LOOKUP_MARGIN:.2f} " if LOOKUP_MARGIN else ""
    if fve:
        bar = f"above 0 fve and {above}above lookup" if has_lookup else f"above 0 fve and {FVE_MARGIN:.2f} above ctrl"
    else:  # no baseline: cosine only
        bar = "cosine above the lookup's" if has_lookup else f"at least {COS_MARGIN:.2f} cosine above ctrl"
    lines = [
        f"ctrl: the AR's score for an EMPTY explanation of the same token ({'fve' if fve else 'cosine'}); "
        "lookup: the fve of the token's mean training activation (what the token alone tells)",
        f"verdict 'worth reading' = {bar} ({worth} of {len(records)} here): read only those",
    ]
    if any(is_sink(r) for r in records):
        lines.append(
            "(sink): position 0, the first token, is an attention sink: its activation is an outlier shared "
            "by every text, so its explanation says little about yours"
        )
    return lines


def render_table(records: Sequence[Any], *, use_rich: bool | None = None, width: int = 120) -> str:
    """The records as a text table; rich's box drawing when rich is installed (or ``use_rich``)."""
    header, rows = table_rows(records)
    if use_rich is None:
        try:
            import rich  # noqa: F401

            use_rich = True
        except ImportError:
            use_rich = False
    if use_rich:
        from rich.console import Console
        from rich.table import Table

        table = Table(show_lines=False)
        for i, name in enumerate(header):
            last = i == len(header) - 1
            table.add_column(
                name, overflow="fold", justify="left" if last or i in (1, 6) else "right", ratio=1 if last else None
            )
        for rec, row in zip(records, rows, strict=True):
            failed = _get(rec, "explanation") is None or bool(_get(rec, "cjk"))
            table.add_row(*row, style="red" if failed else None)
        buf = io.StringIO()
        Console(file=buf, width=width, highlight=False, markup=False, emoji=False).print(table)
        return buf.getvalue()
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header[:-1], widths[:-1], strict=True)) + "  " + header[-1]]
    for r in rows:
        cells = [r[i].ljust(widths[i]) if i in (1, 6) else r[i].rjust(widths[i]) for i in range(len(r) - 1)]
        lines.append("  ".join(cells) + "  " + r[-1])
    return "\n".join(lines) + "\n"


def summary(records: Sequence[Any]) -> dict[str, Any]:
    """Counts and means over the records (means skip missing values)."""

    def mean(name: str) -> float | None:
        vals = [v for r in records if (v := _get(r, name)) is not None]
        return sum(vals) / len(vals) if vals else None

    return {
        "n": len(records),
        "n_beats_control": sum(_get(r, "beats_control") is True for r in records),
        "n_worth_reading": sum(_get(r, "worth_reading") is True for r in records),
        "n_explained": sum(_get(r, "explanation") is not None for r in records),
        "n_cjk": sum(bool(_get(r, "cjk")) for r in records),
        "mean_fve": mean("fve"),
        "mean_cosine": mean("cosine"),
        "mean_mse_nrm": mean("mse_nrm"),
    }


def to_dict(rec: Any) -> dict[str, Any]:
    return dataclasses.asdict(rec) if dataclasses.is_dataclass(rec) else dict(vars(rec))


def write_jsonl(path: str | Path, records: Sequence[Any]) -> None:
    """One JSON object per record (all fields, samples included), written atomically."""
    text = "".join(json.dumps(to_dict(r), ensure_ascii=False) + "\n" for r in records)
    atomic_write_text(Path(path), text)


# ----------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#222;background:#fafafa}
header{padding:12px 20px;background:#fff;border-bottom:1px solid #ddd}
header h1{font-size:18px;margin:0 0 4px 0} header p{margin:2px 0;font-size:13px;color:#555}
main{display:flex;gap:16px;padding:16px 20px}
#text{flex:3;background:#fff;border:1px solid #ddd;border-radius:6px;padding:14px;white-space:pre-wrap;
 font-family:ui-monospace,Menlo,Consolas,monospace;font-size:14px;line-height:1.9}
#panel{flex:2;background:#fff;border:1px solid #ddd;border-radius:6px;padding:14px;font-size:14px;
 position:sticky;top:10px;align-self:flex-start;max-height:90vh;overflow:auto}
.t{border-radius:3px;cursor:pointer;padding:1px 0}
.t:hover,.t.sel{outline:2px solid #333}
.t.fail{text-decoration:underline wavy #b00}
.t.cjk{outline:2px dashed #90c}
.d{display:none} .d.show{display:block}
.d pre{white-space:pre-wrap;background:#f4f4f4;padding:6px;border-radius:4px;font-size:12px}
.k{color:#666} .legend span{display:inline-block;width:28px;height:12px;margin-right:1px}
.legend span.neg{width:40px}
.neg{background:repeating-linear-gradient(45deg,hsl(0,75%,80%) 0 4px,hsl(0,60%,65%) 4px 8px)!important}
.turn{display:block;margin-top:.7em;font-size:11px;font-weight:bold;color:#666}
.t.sink{outline:2px dotted #555} .tpl{display:none} body.showtpl .tpl{display:inline;color:#999}
#overview{padding:0 20px 20px} #overview table{border-collapse:collapse;background:#fff;width:100%;font-size:13px}
#overview td,#overview th{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
#overview tr[data-i]{cursor:pointer} #overview tr.sel{outline:2px solid #333}
#overview td.n{text-align:right;font-family:ui-monospace,Menlo,Consolas,monospace;white-space:nowrap}
"""

_JS = """
document.addEventListener('click',function(ev){
 var t=ev.target.closest('[data-i]');if(!t)return;
 document.querySelectorAll('.sel').forEach(function(e){e.classList.remove('sel')});
 document.querySelectorAll('.d.show').forEach(function(e){e.classList.remove('show')});
 document.querySelectorAll('[data-i="'+t.dataset.i+'"]').forEach(function(e){e.classList.add('sel')});
 var d=document.getElementById('d'+t.dataset.i);if(d){d.classList.add('show');}
 var h=document.getElementById('hint');if(h){h.style.display='none';}
});
var tp=document.getElementById('showtpl');
if(tp){tp.addEventListener('change',function(){document.body.classList.toggle('showtpl',tp.checked)});}
"""


def score_colour(value: float | None) -> str:
    """Red (<= 0) through yellow to green (1) as an HSL background; empty when there is no value."""
    if value is None or math.isnan(value):
        return ""
    x = min(1.0, max(0.0, value))
    return f"hsl({round(120 * x)},75%,80%)"


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _detail(i: int, rec: Any, metric: str) -> str:
    rows = [
        ("position", _get(rec, "position", _get(rec, "index"))),
        ("token", _show_token(_get(rec, "token", "")) if hasattr(rec, "token") else None),
        ("fve", _num(_get(rec, "fve"))),
        ("cosine", _num(_get(rec, "cosine"))),
        ("mse_nrm", _num(_get(rec, "mse_nrm"), "{:.3f}")),
        ("empty explanation (control), fve", _num(_get(rec, "control_fve"))),
        ("empty explanation (control), cosine", _num(_get(rec, "control_cosine"))),
        ("token lookup (mean training activation of the token), fve", _num(_get(rec, "lookup_fve"))),
        ("beats the empty explanation by the margin", control_word(_get(rec, "beats_control"))),
        ("verdict", _verdict(rec)),
        ("failed injection (CJK)", "yes" if _get(rec, "cjk") else "no"),
    ]
    parts = [f'<div class="d" id="d{i}">']
    parts.append(f"<h3>{_esc(_explanation_cell(rec))}</h3>")
    parts += [f'<div><span class="k">{_esc(k)}:</span> {_esc(v)}</div>' for k, v in rows if v is not None]
    parts.append(f'<div class="k">raw answer:</div><pre>{_esc(_get(rec, "raw", ""))}</pre>')
    samples = _get(rec, "samples") or []
    if len(samples) > 1:
        parts.append(f'<div class="k">{len(samples)} samples:</div>')
        for s in samples:
            head = f"{metric} {_num(_get(s, metric))}"
            parts.append(f"<pre><b>{_esc(head)}</b>\n{_esc(_get(s, 'raw', s))}</pre>")
    parts.append("</div>")
    return "".join(parts)


def _overview(records: Sequence[Any]) -> str:
    """A table of every explanation (click a row to pin its details)."""
    header, rows = table_rows(records)
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(
            f'<td class="n">{_esc(c)}</td>' if j in (0, 2, 3, 4) else f"<td>{_esc(c)}</td>" for j, c in enumerate(row)
        )
        body.append(f'<tr data-i="{i}">{cells}</tr>')
    return f'<section id="overview"><h2>Every explanation</h2><table><tr>{head}</tr>{"".join(body)}</table></section>'


def _legend(records: Sequence[Any], metric: str) -> str:
    values = [v for r in records if (v := _get(r, metric)) is not None]
    low = min(values, default=None)
    below = "worse than predicting the mean" if metric == "fve" else "pointing away from the activation"
    lowest = f", lowest here {low:+.3f}" if low is not None and low < 0 else ""
    ramp = "".join(f'<span style="background:{score_colour(k / 10)}"></span>' for k in range(11))
    return (
        f'<p class="legend">{metric}: <span class="neg"></span> below 0, striped ({below}{lowest}) &nbsp; '
        f"0 {ramp} 1 &nbsp; · dotted outline: the first token (an attention sink) · wavy underline: no closed "
        "explanation tag (scored on the raw answer)</p>"
    )


ROLE_NAMES = ("system", "user", "assistant", "tool")


def _turn_marker(template: str) -> str:
    """A visible marker for the turn that a run of hidden chat-template tokens opens (its last role name),
    so the turns of a chat do not run together when the template is hidden; empty when it names none."""
    found = [(template.rfind(r), r) for r in ROLE_NAMES if r in template]
    if not found:
        return ""
    return f'<span class="turn">{_esc(max(found)[1])}:</span>'


def render_html(
    records: Sequence[Any],
    tokens: Sequence[str] | None = None,
    *,
    title: str = "NLA explanations",
    notes: Sequence[str] = (),
    text_mask: Sequence[bool] | None = None,
) -> str:
    """A self-contained HTML page. ``tokens`` are all tokens of the text (records cover a subset of
    them by ``position``); without it, only the records' own tokens are shown. ``text_mask`` marks the
    tokens the user typed: the others are hidden unless explained (a switch shows them)."""
    by_pos = {int(_get(r, "position", _get(r, "index", i))): (i, r) for i, r in enumerate(records)}
    metric = "fve" if any(_get(r, "fve") is not None for r in records) else "cosine"
    if tokens is None:
        tokens = [str(_get(r, "token", f"[{_get(r, 'index', i)}]")) + " " for i, r in enumerate(records)]
        by_pos = {i: (i, r) for i, r in enumerate(records)}
        text_mask = None
    spans, hidden, template = [], 0, ""
    for pos, tok in enumerate(tokens):
        typed = text_mask is None or pos >= len(text_mask) or text_mask[pos]
        if not typed:
            template += tok
        elif template:  # a turn starts after hidden template tokens: show whose turn it is
            spans.append(_turn_marker(template))
            template = ""
        if pos not in by_pos:
            hidden += not typed
            spans.append(f'<span class="{"u" if typed else "u tpl"}">{_esc(tok)}</span>')
            continue
        i, rec = by_pos[pos]
        classes = ["t"]
        if _get(rec, "explanation") is None:
            classes.append("fail")
        if _get(rec, "cjk"):
            classes.append("cjk")
        if is_sink(rec) and hasattr(rec, "position"):
            classes.append("sink")
        if (_get(rec, metric) or 0.0) < 0:
            classes.append("neg")
        colour = score_colour(_get(rec, metric))
        style = f' style="background:{colour}"' if colour else ""
        tip = f"{metric} {_num(_get(rec, metric))} (empty: {_num(_control(rec))}; "
        tip += f"lookup: {_num(_get(rec, 'lookup_fve'))}; {_verdict(rec)})\n"
        tip += _explanation_cell(rec)
        spans.append(f'<span class="{" ".join(classes)}" data-i="{i}"{style} title="{_esc(tip)}">{_esc(tok)}</span>')
    s = summary(records)
    facts = (
        f"{s['n']} explained positions; {s['n_worth_reading']} worth reading (above 0 fve and the token lookup); "
        f"{s['n_beats_control']} beat the empty explanation; tags parsed "
        f"{s['n_explained']}/{s['n']}; CJK (failed injection) {s['n_cjk']}; mean fve {_num(s['mean_fve'])}; "
        f"mean cosine {_num(s['mean_cosine'])}."
    )
    toggle = (
        f'<p><label><input type="checkbox" id="showtpl"> show the {hidden} tokens you did not type '
        "(chat template, special tokens)</label></p>"
        if hidden
        else ""
    )
    legend = [line for line in legend_lines(records) if line not in notes]
    head = "".join(f"<p>{_esc(n)}</p>" for n in [facts, *legend, *notes])
    details = "".join(_detail(i, r, metric) for i, r in enumerate(records))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{_esc(title)}</h1>{head}{_legend(records, metric)}{toggle}</header>"
        f'<main><div id="text">{"".join(spans)}</div>'
        '<div id="panel"><p id="hint" class="k">Hover a token for its explanation; click a token or a row '
        f"below to pin its details.</p>{details}</div>"
        f"</main>{_overview(records)}<script>{_JS}</script></body></html>\n"
    )


def write_html(
    path: str | Path,
    records: Sequence[Any],
    tokens: Sequence[str] | None = None,
    *,
    title: str = "NLA explanations",
    notes: Sequence[str] = (),
    text_mask: Sequence[bool] | None = None,
) -> None:
    atomic_write_text(Path(path), render_html(records, tokens, title=title, notes=notes, text_mask=text_mask))


__all__ = [
    "is_sink",
    "legend_lines",
    "render_html",
    "render_table",
    "score_colour",
    "summary",
    "table_rows",
    "to_dict",
    "write_html",
    "write_jsonl",
]
