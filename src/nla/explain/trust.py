"""Whether an explanation is worth reading: it must carry more than its token alone.

Two references are scored like the explanation itself, on the same activation:

- the **empty explanation** (``control``): what the AR rebuilds from no text at all (every activation
  shares a common direction, so this can score well or very badly depending on the token);
- the **token lookup** (``lookup_fve``): the mean normalised training activation of the same final
  token (:class:`TokenLookup`, shipped with the default NLA as ``token_lookup.safetensors``; the
  overall training mean for a token it does not hold, or for a raw direction that has no token). It is
  what a reader knows by looking at the token, without any explanation.

The verdict ``worth reading`` (:func:`worth_reading`) needs BOTH ``fve > 0`` (the reconstruction beats
predicting the mean) AND ``fve >= lookup_fve + LOOKUP_MARGIN`` (it beats knowing the token). A record with
``fve < 0`` is never marked. Without a lookup table (an NLA that ships none) the second test falls back
to beating the empty explanation by ``FVE_MARGIN``; without a baseline (no fve) the same tests run on
cosine. ``beats_control`` (beats the empty explanation by ``FVE_MARGIN`` fve or ``COS_MARGIN`` cosine) is
kept as a separate, weaker field. ``bench/verdict.py`` measures both verdicts' precision and the share
of tokens they keep on held-out rows (docs/explain.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from nla.common.errors import NLAError

FVE_MARGIN = 0.30
COS_MARGIN = 0.09
LOOKUP_MARGIN = 0.0  # fve above the token lookup required (calibrated by bench/verdict.py; docs/explain.md)
BEATS, NO_BETTER = "beats empty", "no better"
WORTH, NOT_WORTH = "worth reading", "not worth it"
LOOKUP_FILE = "token_lookup.safetensors"


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


def worth_reading(
    fve: float | None,
    cosine: float | None,
    lookup_fve: float | None,
    lookup_cosine: float | None,
    beats: bool | None,
) -> bool | None:
    """The verdict (module docstring): above zero fve AND above the token lookup; None when unscored.

    ``beats`` (:func:`beats_control`) stands in for the lookup when there is none."""
    if fve is not None:
        if fve <= 0:
            return False
        if lookup_fve is not None:
            return fve >= lookup_fve + LOOKUP_MARGIN
        return None if beats is None else beats
    if cosine is not None and lookup_cosine is not None:
        return cosine > lookup_cosine
    return None if cosine is None else beats


def verdict(worth: bool | None) -> str:
    """The plain word for :func:`worth_reading`'s answer (``-`` when unscored)."""
    return "-" if worth is None else (WORTH if worth else NOT_WORTH)


def control_word(beats: bool | None) -> str:
    """The plain word for :func:`beats_control`'s answer (``-`` when unscored)."""
    return "-" if beats is None else (BEATS if beats else NO_BETTER)


class TokenLookup:
    """Mean normalised training activation per final token (the token-lookup reference of the verdict).

    ``ids`` (K,) token ids, ``means`` (K, d) unit-normalised means, ``overall`` (d,) the mean of all
    normalised training vectors (used for any other token). Saved as safetensors (fp16 means) with the
    layer, target and row count in its metadata; built by ``bench/verdict.py build``."""

    def __init__(self, ids: torch.Tensor, means: torch.Tensor, overall: torch.Tensor, meta: dict[str, str]) -> None:
        if means.dim() != 2 or ids.shape[0] != means.shape[0] or overall.shape != means.shape[1:]:
            raise NLAError(f"bad token lookup shapes: ids {tuple(ids.shape)}, means {tuple(means.shape)}")
        self.means, self.overall, self.meta = means.float(), overall.float(), dict(meta)
        self.row_of = {int(t): i for i, t in enumerate(ids.tolist())}

    @property
    def d_model(self) -> int:
        return int(self.means.shape[1])

    def reference(self, token_ids: Sequence[int | None]) -> torch.Tensor:  # -> (N, d)
        """The lookup prediction for each token id (the overall mean for None or an unknown id)."""
        rows = [self.means[self.row_of[t]] if t is not None and t in self.row_of else self.overall for t in token_ids]
        return torch.stack(rows) if rows else torch.zeros(0, self.d_model)

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        ids = torch.tensor(sorted(self.row_of, key=self.row_of.__getitem__), dtype=torch.int64)
        tensors = {"ids": ids, "means": self.means.half().contiguous(), "overall": self.overall.float().contiguous()}
        save_file(tensors, str(path), metadata=self.meta)

    @classmethod
    def load(cls, path: str | Path) -> TokenLookup:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                t = {k: f.get_tensor(k) for k in ("ids", "means", "overall")}
        except Exception as e:  # noqa: BLE001 (safetensors raises several types for a broken file)
            raise NLAError(f"cannot read the token lookup {path}: {e}") from e
        return cls(t["ids"], t["means"], t["overall"], meta)


def build_token_lookup(
    data: str | Path, model: str, *, min_count: int = 2, top: int = 2000, layer: int | None = None
) -> TokenLookup:
    """The table from TRAINING rows: the training splits (av_sft, ar_sft, rl) of an ``nla extract`` directory,
    or a parquet of rows with their context text. Each row's final token id comes from its context, as the
    card's token lookup does (:func:`nla.evaluate.lookup.last_token_ids`); the ``top`` most frequent tokens
    seen at least ``min_count`` times keep their mean normalised vector, every other token gets the overall
    mean. ``nla train pipeline`` writes it beside the NLA it ships; ``bench/verdict.py build`` for any data.
    ``layer`` defaults to the one the data's sidecar states."""
    from nla.common.meta import MODEL_SIDECAR, dataset_sidecar_path, layer_index, read_sidecar
    from nla.core.metrics import unit
    from nla.evaluate.lookup import last_token_ids, table_rows
    from nla.models.target import load_tokenizer

    rows = table_rows(data)
    if layer is None:
        side = next((s for s in (Path(data) / MODEL_SIDECAR, dataset_sidecar_path(Path(data))) if s.is_file()), None)
        layer = layer_index(read_sidecar(side)) if side is not None else None
    ids = [t[-1] for t in last_token_ids(load_tokenizer(model), rows.contexts or [], k=1)]
    vecs = unit(rows.vectors.float())  # (N, d)
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    for t, v in zip(ids, vecs, strict=True):
        sums[t] = sums[t] + v if t in sums else v.clone()
        counts[t] = counts.get(t, 0) + 1
    kept = sorted((t for t in counts if counts[t] >= min_count), key=lambda t: (-counts[t], t))[:top]
    d = vecs.shape[1]
    means = torch.stack([sums[t] / counts[t] for t in kept]) if kept else torch.zeros(0, d)  # (K, d)
    meta = {
        "source": str(data), "rows": str(len(ids)), "tokens": str(len(kept)),
        "rows_covered": str(sum(counts[t] for t in kept)), "min_count": str(min_count),
        "layer": str(layer), "target": model,
    }  # fmt: skip
    return TokenLookup(torch.tensor(kept, dtype=torch.int64), means, vecs.mean(0), meta)


def lookup_scores(
    lookup: TokenLookup | None,
    vectors: torch.Tensor,  # (N, d)
    token_ids: Sequence[int | None],
    baseline: float | None,
) -> tuple[list[float | None], list[float | None]]:
    """(fve, cosine) of the token-lookup prediction of each vector; Nones without a lookup."""
    n = vectors.shape[0]
    if lookup is None or n == 0:
        return [None] * n, [None] * n
    if lookup.d_model != vectors.shape[1]:
        raise NLAError(f"the token lookup has width {lookup.d_model}, the activations {vectors.shape[1]}")
    ref = lookup.reference(token_ids)  # (N, d)
    cos = torch.nn.functional.cosine_similarity(ref, vectors.float(), dim=-1)  # (N,)
    cosines = [float(c) for c in cos]
    if baseline is None:
        return [None] * n, cosines
    return [1.0 - 2.0 * (1.0 - c) / baseline for c in cosines], cosines


def find_lookup(av_dir: str | Path | None) -> Path | None:
    """The token lookup of an AV checkpoint: ``token_lookup.safetensors`` in its directory, or beside it in
    an NLA directory (``{av,ar,card.json,token_lookup.safetensors}``, as the package's default NLA and
    ``nla train pipeline``'s ``ship/nla`` are laid out)."""
    if av_dir is None:
        return None
    p = Path(av_dir)
    for cand in (p / LOOKUP_FILE, p.parent / LOOKUP_FILE):
        if cand.is_file():
            return cand
    return None


__all__ = [
    "BEATS",
    "COS_MARGIN",
    "FVE_MARGIN",
    "LOOKUP_FILE",
    "LOOKUP_MARGIN",
    "NOT_WORTH",
    "NO_BETTER",
    "WORTH",
    "TokenLookup",
    "beats_control",
    "control_fve",
    "control_word",
    "build_token_lookup",
    "find_lookup",
    "lookup_scores",
    "verdict",
    "worth_reading",
]
