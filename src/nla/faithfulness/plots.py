"""The report's plots as inline SVG strings (matplotlib, optional: ``pip install 'nla[faithfulness]'``).

:func:`available` says whether matplotlib can be imported; every other function returns one ``<svg>``
element (no XML header, text kept as text) or ``""`` when there is nothing to draw.
"""

from __future__ import annotations

import io
from typing import Any


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.find("<svg") :]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"
    matplotlib.rcParams["svg.hashsalt"] = "nla"  # stable ids: the same report gives the same file
    import matplotlib.pyplot as plt

    return plt


def hit_rate_plot(planting: dict[str, Any]) -> str:
    """Hit rate against alpha, one line per concept (alpha = 0: the concept's false-positive rate)."""
    hit = planting.get("hit_rate") or {}
    if not hit:
        return ""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    alphas = list(planting["alphas"])
    for name, by_alpha in hit.items():
        ys = [by_alpha.get(f"{a:g}") for a in alphas]
        ax.plot(range(len(alphas)), [float("nan") if y is None else y for y in ys], marker="o", label=name)
    ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_xlabel("planting strength alpha (v + alpha |v| unit(d))")
    ax.set_ylabel("explanations naming the concept")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _svg(fig)


def confusion_plot(planting: dict[str, Any], alpha: str) -> str:
    """Planted concept (rows) against the concepts the explanation names (columns), at one alpha."""
    table = (planting.get("cross_talk") or {}).get(alpha) or {}
    if not table:
        return ""
    plt = _pyplot()
    rows = list(table)
    cols = [c for c in next(iter(table.values())) if c != "none"] + ["none"]
    data = [[table[r].get(c) or 0.0 for c in cols] for r in rows]
    fig, ax = plt.subplots(figsize=(0.55 * len(cols) + 2.2, 0.4 * len(rows) + 1.6))
    im = ax.imshow(data, vmin=0, vmax=1, cmap="Blues", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("named in the explanation")
    ax.set_ylabel(f"planted (alpha = {alpha})")
    for i, row in enumerate(data):
        for j, v in enumerate(row):
            if v > 0:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v > 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.03)
    return _svg(fig)


def delta_fve_plot(heldout: dict[str, Any]) -> str:
    """fve change of each perturbation, for the NLA's explanations (and the teacher's when present)."""
    pert = heldout.get("perturbations") or {}
    if not pert or pert.get("nla", {}).get("as written", {}).get("fve") is None:
        return ""
    plt = _pyplot()
    names = [n for n in pert["nla"] if n != "as written"]
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    width = 0.8 / len(pert)
    for k, (who, scores) in enumerate(pert.items()):
        ys = [scores[n]["delta"] or 0.0 for n in names]
        ax.bar([i + k * width for i in range(len(names))], ys, width, label=who)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks([i + width * (len(pert) - 1) / 2 for i in range(len(names))], names, rotation=20, ha="right")
    ax.set_ylabel("delta fve_nrm vs as written")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    return _svg(fig)


__all__ = ["available", "confusion_plot", "delta_fve_plot", "hit_rate_plot"]
