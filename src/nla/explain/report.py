"""Show explanations: a terminal table, a JSONL file (one record per token) and a self-contained HTML page.

The HTML page has no external URLs (inline CSS and JS). Each token of the text is coloured by its
round-trip score (``fve`` when a baseline is known, else ``cosine``); hovering a token shows its
explanation and numbers, clicking pins the full record (raw answer, samples) in a side panel. Every
piece of user text is HTML-escaped. All writes are atomic (temporary file + rename).

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


def _get(rec: Any, name: str, default: Any = None) -> Any:
    return getattr(rec, name, default)


def _num(x: float | None, fmt: str = "{:+.3f}") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _show_token(tok: str) -> str:
    return repr(tok)[1:-1] if tok else "''"


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
    header += ["fve", "cos", "explanation"]
    rows = []
    for rec in records:
        idx, label = _label(rec)
        rows.append([idx, label, _num(_get(rec, "fve")), _num(_get(rec, "cosine")), _explanation_cell(rec)])
    return header, rows


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
                name, overflow="fold", justify="left" if last or i == 1 else "right", ratio=1 if last else None
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
        cells = [r[1].ljust(widths[1]) if i == 1 else r[i].rjust(widths[i]) for i in range(len(r) - 1)]
        lines.append("  ".join(cells) + "  " + r[-1])
    return "\n".join(lines) + "\n"


def summary(records: Sequence[Any]) -> dict[str, Any]:
    """Counts and means over the records (means skip missing values)."""

    def mean(name: str) -> float | None:
        vals = [v for r in records if (v := _get(r, name)) is not None]
        return sum(vals) / len(vals) if vals else None

    return {
        "n": len(records),
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
"""

_JS = """
document.addEventListener('click',function(ev){
 var t=ev.target.closest('.t');if(!t)return;
 document.querySelectorAll('.t.sel').forEach(function(e){e.classList.remove('sel')});
 document.querySelectorAll('.d.show').forEach(function(e){e.classList.remove('show')});
 t.classList.add('sel');
 var d=document.getElementById('d'+t.dataset.i);if(d){d.classList.add('show');}
 var h=document.getElementById('hint');if(h){h.style.display='none';}
});
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


def render_html(
    records: Sequence[Any],
    tokens: Sequence[str] | None = None,
    *,
    title: str = "NLA explanations",
    notes: Sequence[str] = (),
) -> str:
    """A self-contained HTML page. ``tokens`` are all tokens of the text (records cover a subset of
    them by ``position``); without it, only the records' own tokens are shown."""
    by_pos = {int(_get(r, "position", _get(r, "index", i))): (i, r) for i, r in enumerate(records)}
    metric = "fve" if any(_get(r, "fve") is not None for r in records) else "cosine"
    if tokens is None:
        tokens = [str(_get(r, "token", f"[{_get(r, 'index', i)}]")) + " " for i, r in enumerate(records)]
        by_pos = {i: (i, r) for i, r in enumerate(records)}
    spans = []
    for pos, tok in enumerate(tokens):
        if pos not in by_pos:
            spans.append(f'<span class="u">{_esc(tok)}</span>')
            continue
        i, rec = by_pos[pos]
        classes = ["t"]
        if _get(rec, "explanation") is None:
            classes.append("fail")
        if _get(rec, "cjk"):
            classes.append("cjk")
        colour = score_colour(_get(rec, metric))
        style = f' style="background:{colour}"' if colour else ""
        tip = f"{metric} {_num(_get(rec, metric))}\n{_explanation_cell(rec)}"
        spans.append(f'<span class="{" ".join(classes)}" data-i="{i}"{style} title="{_esc(tip)}">{_esc(tok)}</span>')
    s = summary(records)
    facts = (
        f"{s['n']} explained positions; tags parsed {s['n_explained']}/{s['n']}; CJK (failed injection) {s['n_cjk']}; "
        f"mean fve {_num(s['mean_fve'])}; mean cosine {_num(s['mean_cosine'])}. Colour: {metric} (red 0 to green 1); "
        "wavy underline: no closed explanation tag (scored on the raw answer)."
    )
    legend = "".join(f'<span style="background:{score_colour(k / 10)}"></span>' for k in range(11))
    head = "".join(f"<p>{_esc(n)}</p>" for n in [facts, *notes])
    details = "".join(_detail(i, r, metric) for i, r in enumerate(records))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f'<header><h1>{_esc(title)}</h1>{head}<p class="legend">{metric}: 0 {legend} 1</p></header>'
        f'<main><div id="text">{"".join(spans)}</div>'
        '<div id="panel"><p id="hint" class="k">Hover a token for its explanation; click to pin details.</p>'
        f"{details}</div>"
        f"</main><script>{_JS}</script></body></html>\n"
    )


def write_html(
    path: str | Path,
    records: Sequence[Any],
    tokens: Sequence[str] | None = None,
    *,
    title: str = "NLA explanations",
    notes: Sequence[str] = (),
) -> None:
    atomic_write_text(Path(path), render_html(records, tokens, title=title, notes=notes))


__all__ = [
    "render_html",
    "render_table",
    "score_colour",
    "summary",
    "table_rows",
    "to_dict",
    "write_html",
    "write_jsonl",
]
