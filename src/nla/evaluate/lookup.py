"""The token-lookup control: predict each held-out vector by the mean training vector of its final token(s).

No model and no explanation: for every TRAINING row the normalised activation is filed under keys built
from its context's last tokens, and a held-out row is predicted by the mean of the most specific key it
has in training, backing off to shorter keys and then to the overall mean. Scored like an explanation
(``fve_nrm`` against the training split's B), it shows how much of an activation the final token alone
predicts: an explanation carries more than the token only where it beats this. Two tables are reported:

- ``fve_token_lookup``: the final token;
- ``fve_token_lookup_2``: the last two tokens, backing off to the final token, then to the mean.

Token ids come from each row's context text (``detokenized_text_truncated``), tokenised like the teacher
does (``add_special_tokens=False``; special-token strings in the text become their ids). The table is
filled from training rows only (:func:`table_rows`: a parquet file, or every training split of an
``nla extract`` directory: the rows the NLA itself was trained on), never from the held-out rows.

>>> control = token_lookup_control(train.vectors, train.contexts, held.vectors, held.contexts, tok, B)  # doctest: +SKIP
>>> control["fve_token_lookup"]                                                        # doctest: +SKIP
0.39
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import torch

from nla.common.errors import NLAError
from nla.common.meta import MODEL_SIDECAR
from nla.core.metrics import fve_nrm, mse_nrm, unit
from nla.data.activations import SPLITS, VectorSet, load_vectors

TRAIN_SPLITS = tuple(s for s in SPLITS if s != "eval")


def table_rows(path: str | Path) -> VectorSet:
    """Training rows for the table: a parquet file (or folder of parquet), or all of ``av_sft``, ``ar_sft``
    and ``rl`` of an ``nla extract`` directory. Every row needs its context text."""
    p = Path(path)
    if (p / MODEL_SIDECAR).exists():
        parts = [load_vectors(p, s) for s in TRAIN_SPLITS if (p / s).is_dir()]
    else:
        parts = [load_vectors(p)]
    if not parts or any(v.contexts is None for v in parts):
        raise NLAError(f"{p}: the token lookup needs training rows with a detokenized_text_truncated column")
    return VectorSet(
        torch.cat([v.vectors for v in parts]),
        [d for v in parts for d in v.doc_ids],
        [c for v in parts for c in v.contexts or []],
        None,
    )


def last_token_ids(tokenizer: Any, contexts: Sequence[str], k: int = 2) -> list[tuple[int, ...]]:
    """The last ``k`` token ids of each context (fewer when the context is shorter)."""
    out = []
    for start in range(0, len(contexts), 256):
        chunk = [str(c) for c in contexts[start : start + 256]]
        for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
            if not ids:
                raise NLAError("a row's context text tokenises to nothing: cannot find its final token")
            out.append(tuple(int(i) for i in ids[-k:]))
    return out


def lookup_predict(
    train_keys: Sequence[Sequence[Hashable]],
    train_vectors: torch.Tensor,  # (N, d) raw
    held_keys: Sequence[Sequence[Hashable]],
) -> tuple[torch.Tensor, list[int]]:  # -> (M, d), level used per held-out row
    """Mean normalised training vector of each held-out row's most specific key seen in training.

    ``keys[i]`` lists row i's keys, most specific first. The returned level is the index of the key used,
    or ``len(keys[i])`` when none was seen and the overall mean was used."""
    if len(train_keys) != train_vectors.shape[0] or train_vectors.shape[0] == 0:
        raise NLAError("the token lookup needs one key list per training vector, and at least one vector")
    vecs = unit(train_vectors.float())  # (N, d)
    sums: dict[tuple[int, Hashable], torch.Tensor] = {}
    counts: dict[tuple[int, Hashable], int] = {}
    for keys, v in zip(train_keys, vecs, strict=True):
        for level, key in enumerate(keys):
            slot = (level, key)
            if slot in sums:
                sums[slot] += v
                counts[slot] += 1
            else:
                sums[slot], counts[slot] = v.clone(), 1
    overall = vecs.mean(0)  # (d,)
    preds, levels = [], []
    for keys in held_keys:
        level = next((j for j, key in enumerate(keys) if (j, key) in counts), len(keys))
        preds.append(sums[(level, keys[level])] / counts[(level, keys[level])] if level < len(keys) else overall)
        levels.append(level)
    return torch.stack(preds) if preds else torch.zeros(0, vecs.shape[1]), levels


def token_lookup_rows(
    train_ids: Sequence[tuple[int, ...]],
    train_vectors: torch.Tensor,  # (N, d)
    held_ids: Sequence[tuple[int, ...]],
    held_vectors: torch.Tensor,  # (M, d)
) -> dict[str, Any]:
    """Per-row ``mse_nrm`` of both tables (``final``, ``last_two``, each (M,)) and the share of held-out
    rows whose full key was seen in training (``final_seen``, ``last_two_seen``)."""

    def keys(ids: tuple[int, ...], two: bool) -> list[Hashable]:
        return [ids[-2:], ids[-1:]] if two else [ids[-1:]]

    out: dict[str, Any] = {}
    for name, two in (("final", False), ("last_two", True)):
        pred, levels = lookup_predict(
            [keys(i, two) for i in train_ids], train_vectors, [keys(i, two) for i in held_ids]
        )
        out[name] = mse_nrm(pred, held_vectors.float())  # (M,)
        out[f"{name}_seen"] = sum(lv == 0 for lv in levels) / max(1, len(levels))
    return out


def token_lookup_control(
    train_vectors: torch.Tensor,  # (N, d)
    train_contexts: Sequence[str],
    held_vectors: torch.Tensor,  # (M, d)
    held_contexts: Sequence[str],
    tokenizer: Any,
    baseline: float,
) -> dict[str, float]:
    """``fve_token_lookup`` and ``fve_token_lookup_2`` (see the module docstring) with their key coverage."""
    if len(train_contexts) != train_vectors.shape[0] or len(held_contexts) != held_vectors.shape[0]:
        raise NLAError("the token lookup needs a context text for every vector (detokenized_text_truncated)")
    rows = token_lookup_rows(
        last_token_ids(tokenizer, train_contexts), train_vectors, last_token_ids(tokenizer, held_contexts), held_vectors
    )
    return {
        "fve_token_lookup": fve_nrm(rows["final"], baseline),
        "fve_token_lookup_2": fve_nrm(rows["last_two"], baseline),
        "token_lookup_seen": float(rows["final_seen"]),
        "token_lookup_2_seen": float(rows["last_two_seen"]),
        "token_lookup_train_rows": float(train_vectors.shape[0]),
    }


__all__ = [
    "TRAIN_SPLITS",
    "last_token_ids",
    "lookup_predict",
    "table_rows",
    "token_lookup_control",
    "token_lookup_rows",
]
