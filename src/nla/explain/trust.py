"""Whether to trust one explanation: does it beat the EMPTY explanation of the same token by a margin?

The AR rebuilds something from any text, even an empty one (its ``control``), because every activation
shares a common direction. An explanation carries information about its token only as far as its
round-trip score rises above that control, so each record gets a plain verdict:

- with a predict-the-mean baseline B (``fve`` known): ``fve - control_fve >= FVE_MARGIN``, where
  ``control_fve = 1 - 2 (1 - control_cosine) / B``;
- without B: ``cosine - control_cosine >= COS_MARGIN`` (the same margin at B = 0.6, the size B has on
  SmolLM2: 0.30 fve = 0.09 cosine there, since fve moves by 2 cos / B).

The margin, 0.30 fve, is where an explanation written for ANOTHER token passes about one time in ten,
while nine in ten of the tokens' own explanations still pass (``bench/trust_margin.py`` on the shipped
NLA: 154 tokens of 8 texts; own 0.90, shuffled 0.10; at 0.10 fve: own 0.96 but shuffled 0.31). See
docs/explain.md.
"""

from __future__ import annotations

FVE_MARGIN = 0.30
COS_MARGIN = 0.09
BEATS, NO_BETTER = "beats empty", "no better"


def control_fve(control_cosine: float | None, baseline: float | None) -> float | None:
    """The empty-explanation control as fve: ``1 - mse_nrm / B`` with ``mse_nrm = 2 (1 - cos)``."""
    if control_cosine is None or baseline is None:
        return None
    return 1.0 - 2.0 * (1.0 - control_cosine) / baseline


def beats_control(
    fve: float | None, cosine: float | None, ctrl_fve: float | None, ctrl_cosine: float | None
) -> bool | None:
    """True when the explanation beats its empty control by the margin; None when there is no score."""
    if fve is not None and ctrl_fve is not None:
        return fve - ctrl_fve >= FVE_MARGIN
    if cosine is not None and ctrl_cosine is not None:
        return cosine - ctrl_cosine >= COS_MARGIN
    return None


def verdict(beats: bool | None) -> str:
    """The plain word for :func:`beats_control`'s answer (``-`` when unscored)."""
    return "-" if beats is None else (BEATS if beats else NO_BETTER)


__all__ = ["BEATS", "COS_MARGIN", "FVE_MARGIN", "NO_BETTER", "beats_control", "control_fve", "verdict"]
