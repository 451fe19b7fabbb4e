"""Activation datasets on disk: the layout ``nla extract`` writes and every later stage reads.

Layout of a dataset directory::

    <data_dir>/nla_meta.yaml                              # summary: splits, row/doc/token counts
    <data_dir>/<split>/part-00000.parquet                 # rows of one split
    <data_dir>/<split>/part-00000.parquet.nla_meta.yaml   # official sidecar (kind: nla_dataset)

Splits are by DOCUMENT (:data:`SPLITS`), assigned by a stable hash of ``doc_id`` so the assignment does
not depend on corpus order. Vectors are stored RAW (float32).

>>> table = read_split("data/acts", "av_sft")          # doctest: +SKIP
>>> vectors(table).shape                              # doctest: +SKIP
torch.Size([2500, 576])
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from nla.common.errors import NLAError
from nla.common.meta import DATASET_SCHEMA_VERSION, MODEL_SIDECAR, dataset_sidecar_path, read_sidecar, write_sidecar
from nla.common.paths import atomic_dir
from nla.data.official import explanation_texts

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("av_sft", "ar_sft", "rl", "eval")
VECTOR_COL = "activation_vector"
DEFAULT_FRACTIONS: tuple[float, ...] = (0.25, 0.25, 0.4, 0.1)

SCHEMA = pa.schema(
    [
        ("activation_vector", pa.list_(pa.float32())),
        ("doc_id", pa.string()),
        ("position", pa.int32()),
        ("n_raw_tokens", pa.int32()),
        ("activation_layer", pa.int32()),
        ("detokenized_text_truncated", pa.string()),
        ("token", pa.string()),
    ]
)


def check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    """Validate split fractions (one per entry of :data:`SPLITS`, non-negative, summing to 1)."""
    fr = tuple(float(f) for f in fractions)
    if len(fr) != len(SPLITS):
        raise NLAError(f"need {len(SPLITS)} split fractions ({', '.join(SPLITS)}), got {len(fr)}")
    if any(f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise NLAError(f"split fractions must be >= 0 and sum to 1, got {list(fr)}")
    return fr


def stable_uniform(*parts: object) -> float:
    """A number in [0, 1) that depends only on ``parts`` (sha256; same on every machine and run)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(doc_id: str, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0) -> str:
    """The split a document belongs to: a stable hash of (seed, doc_id) against cumulative fractions."""
    fr = check_fractions(fractions)
    u = stable_uniform("split", seed, doc_id)
    acc = 0.0
    for name, f in zip(SPLITS, fr, strict=True):
        acc += f
        if u < acc:
            return name
    return next(name for name, f in zip(reversed(SPLITS), reversed(fr), strict=True) if f > 0)


def split_files(data_dir: Path | str, split: str) -> list[Path]:
    """The parquet parts of one split, in order."""
    if split not in SPLITS:
        raise NLAError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    root = Path(data_dir)
    if not (root / MODEL_SIDECAR).exists():
        raise NLAError(f"{root} is not an nla activation dataset (no {MODEL_SIDECAR}); run `nla extract` first")
    return sorted((root / split).glob("part-*.parquet"))


def read_split(data_dir: Path | str, split: str, columns: Sequence[str] | None = None) -> pa.Table:
    """All rows of ``split`` as one table (empty table with the schema if the split has no rows)."""
    files = split_files(data_dir, split)
    cols = list(columns) if columns is not None else None
    if cols is not None:
        unknown = [c for c in cols if c not in SCHEMA.names]
        if unknown:
            raise NLAError(f"unknown column(s) {unknown}; dataset columns are {SCHEMA.names}")
    if not files:
        schema = SCHEMA if cols is None else pa.schema([SCHEMA.field(c) for c in cols])
        return schema.empty_table()
    return pa.concat_tables(pq.read_table(f, columns=cols) for f in files)


def read_dataset_meta(data_dir: Path | str) -> dict[str, Any]:
    """The top-level ``nla_meta.yaml`` summary of a dataset directory."""
    path = Path(data_dir) / MODEL_SIDECAR
    if not path.exists():
        raise NLAError(f"{data_dir} is not an nla activation dataset (no {MODEL_SIDECAR}); run `nla extract` first")
    return read_sidecar(path, kind="nla_dataset")


def vectors(table: pa.Table) -> torch.Tensor:  # -> (N, d) float32
    """The ``activation_vector`` column as an (N, d) float32 tensor (raw, not normalised); every row must
    have the same length."""
    vecs, missing = activation_matrix(table)
    if bool(missing.any()):
        raise NLAError("activation_vector rows have different lengths")
    return vecs


def activation_matrix(table: pa.Table, where: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """The ``activation_vector`` column as (N, d) float32 and a (N,) mask of rows that have no vector of
    length d (null, or another length; those rows are zero). d is the most common length."""
    col = table.column(VECTOR_COL).combine_chunks()
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type)):
        raise NLAError(f"{where or 'data'}: column {VECTOR_COL} must be a list of floats, got {col.type}")
    n = len(col)
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
    present = lengths[lengths > 0]
    d = int(np.bincount(present).argmax()) if present.size else 0
    ok = lengths == d if d else np.zeros(n, dtype=bool)
    vecs = torch.zeros(n, d)
    if ok.any():
        flat = pc.list_flatten(col.filter(pa.array(ok))).to_numpy(zero_copy_only=False).astype(np.float32)
        vecs[torch.from_numpy(ok)] = torch.from_numpy(flat.reshape(-1, d))
    return vecs, torch.from_numpy(~ok)


def assert_disjoint(data_dir: Path | str) -> dict[str, int]:
    """Check that no document appears in two splits; return the number of documents per split."""
    seen: dict[str, str] = {}
    counts: dict[str, int] = {}
    for split in SPLITS:
        ids = set(read_split(data_dir, split, columns=["doc_id"]).column("doc_id").to_pylist())
        counts[split] = len(ids)
        for doc_id in ids:
            other = seen.setdefault(doc_id, split)
            if other != split:
                raise NLAError(f"document {doc_id!r} is in both the {other} and {split} splits of {data_dir}")
    return counts


# ----------------------------------------------------------------------------------------- writing

STATS_KEY = b"nla_chunk_stats"  # parquet metadata of a chunk: {"docs", "used", "skipped_short", "rows", "tokens"}


def chunk_stats(path: Path) -> dict[str, int]:
    """The counts a chunk file carries in its parquet metadata."""
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(STATS_KEY, b"{}"))


class _PartWriter:
    """Rows of one split into ``part-NNNNN.parquet`` files of at most ``shard_rows`` rows."""

    def __init__(self, folder: Path, shard_rows: int) -> None:
        self.folder, self.shard_rows = folder, shard_rows
        self.parts: list[tuple[Path, int, set[str]]] = []  # (file, rows, doc ids)
        self.writer: pq.ParquetWriter | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def _open(self) -> None:
        path = self.folder / f"part-{len(self.parts):05d}.parquet"
        self.writer = pq.ParquetWriter(path, SCHEMA)
        self.parts.append((path, 0, set()))

    def write(self, table: pa.Table) -> None:
        while table.num_rows:
            if self.writer is None or self.parts[-1][1] >= self.shard_rows:
                self.close()
                self._open()
            path, rows, ids = self.parts[-1]
            piece = table.slice(0, self.shard_rows - rows)
            assert self.writer is not None
            self.writer.write_table(piece)
            ids.update(piece.column("doc_id").to_pylist())
            self.parts[-1] = (path, rows + piece.num_rows, ids)
            table = table.slice(piece.num_rows)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def finish(self) -> list[tuple[Path, int, set[str]]]:
        if not self.parts:  # an empty split still gets one (empty) part and its sidecar
            self._open()
        self.close()
        return self.parts


def write_dataset(
    chunk_paths: Sequence[Path],
    out: Path,
    meta: dict[str, Any],
    *,
    shard_rows: int = 200_000,
) -> dict[str, Any]:
    """Assemble chunk files (rows with a ``split`` column, in order) into the dataset layout at ``out``.

    ``meta`` holds ``d_model``, ``extraction`` and ``provenance``; each part gets an official sidecar and
    ``out/nla_meta.yaml`` the summary. The directory appears at ``out`` only when complete.
    """
    totals = {"docs": 0, "used": 0, "skipped_short": 0, "rows": 0, "tokens": 0}
    for path in chunk_paths:
        stats = chunk_stats(path)
        for k in totals:
            totals[k] += int(stats.get(k, 0))
    with atomic_dir(Path(out)) as tmp:
        writers = {s: _PartWriter(tmp / s, shard_rows) for s in SPLITS}
        for path in chunk_paths:
            table = pq.read_table(path)
            for split in SPLITS:
                rows = table.filter(pc.equal(table.column("split"), split)).drop_columns(["split"])
                if rows.num_rows:
                    writers[split].write(rows.select(SCHEMA.names).cast(SCHEMA))
        splits: dict[str, Any] = {}
        for split in SPLITS:
            parts = writers[split].finish()
            doc_ids = set().union(*(ids for _, _, ids in parts))
            for i, (path, rows, ids) in enumerate(parts):
                part_meta = {
                    "kind": "nla_dataset",
                    "schema_version": DATASET_SCHEMA_VERSION,  # the official reader asserts it
                    "dataset_id": f"{split}_{meta['provenance'].get('fingerprint', 'nla')}_{i:05d}",
                    "stage": "base",  # official stage names: raw vectors without explanations are "base"
                    "row_count": rows,
                    "d_model": meta["d_model"],
                    "extraction": meta["extraction"],
                    "created_by": "nla extract",
                    "split": split,
                    "n_rows": rows,
                    "n_docs": len(ids),
                    "provenance": meta["provenance"],
                }
                write_sidecar(dataset_sidecar_path(path), part_meta)
            splits[split] = {
                "rows": sum(r for _, r, _ in parts),
                "docs": len(doc_ids),
                "files": [f"{split}/{p.name}" for p, _, _ in parts],
            }
        summary = {
            "kind": "nla_dataset",
            "d_model": meta["d_model"],
            "extraction": meta["extraction"],
            "splits": splits,
            "n_rows": totals["rows"],
            "n_docs": totals["docs"],
            "n_used_docs": totals["used"],
            "n_skipped_short": totals["skipped_short"],
            "n_tokens": totals["tokens"],
            "provenance": meta["provenance"],
        }
        write_sidecar(tmp / MODEL_SIDECAR, summary)
        assert_disjoint(tmp)
    return summary


# ----------------------------------------------------------------------------- reading any activation data


@dataclass
class ParquetInput:
    """Rows read by :func:`read_parquet`, with the files they came from and their dataset sidecar."""

    table: pa.Table
    files: list[Path]
    sidecar: dict[str, Any]  # the first file's nla_dataset sidecar, else the dataset summary, else {}


def read_parquet(
    path: str | Path, *, split: str | None = None, columns: Sequence[str] | None = None, require: Sequence[str] = ()
) -> ParquetInput:
    """The one reader of activation/teacher parquet: an ``nla extract`` directory (its ``split``), a parquet
    file, or a folder of parquet files (concatenated). Only ``columns`` are read (those present; all when
    None); a missing ``require`` column, a missing/unreadable file or incompatible schemas are one
    :class:`NLAError` each."""
    p = Path(path)
    if not p.exists():
        raise NLAError(f"data file not found: {p}")
    loose = sorted(p.glob("*.parquet")) if p.is_dir() else []
    if p.is_dir() and split is not None and not loose:  # an `nla extract` directory
        if split not in SPLITS:
            raise NLAError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        files = sorted((p / split).glob("part-*.parquet"))
        if not files:
            raise NLAError(f"no {split} rows under {p}: expected {p / split}/part-*.parquet (run `nla extract` first)")
    elif p.is_dir():
        files = loose
        if not files:
            raise NLAError(f"{p} holds no .parquet files (nor is it an `nla extract` directory)")
    else:
        files = [p]
    try:
        names = pq.read_schema(files[0]).names
    except (pa.ArrowInvalid, OSError) as e:
        raise NLAError(f"{files[0]} is not a readable parquet file: {e}") from e
    missing = [c for c in require if c not in names]
    if missing:
        raise NLAError(f"{files[0]} lacks column(s) {', '.join(missing)} (has: {', '.join(names)})")
    cols = None if columns is None else [c for c in columns if c in names]
    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f, columns=cols))
        except (pa.ArrowInvalid, OSError) as e:
            raise NLAError(f"{f} is not a readable parquet file: {e}") from e
    try:
        table = pa.concat_tables(tables, promote_options="default")
    except (pa.ArrowInvalid, TypeError) as e:
        raise NLAError(f"the parquet files under {p} have incompatible schemas: {e}") from e
    side = dataset_sidecar_path(files[0])
    if side.exists():
        sidecar = read_sidecar(side, kind="nla_dataset")
    elif p.is_dir() and (p / MODEL_SIDECAR).exists():
        sidecar = read_sidecar(p / MODEL_SIDECAR, kind="nla_dataset")
    else:
        sidecar = {}
    return ParquetInput(table, files, sidecar)


def check_same_source(parts: Sequence[tuple[str, dict[str, Any], int]]) -> None:
    """Raise unless every ``(path, sidecar, d_model)`` of a comma-separated ``--data`` list comes from the same
    base model and layer as the first (training on activations of two models or layers is a mistake)."""
    key = ("base_model", "layer_index")
    path0, side0, d0 = parts[0]
    ext0 = side0.get("extraction") or {}
    for path, side, d in parts[1:]:
        ext = side.get("extraction") or {}
        if any(ext.get(k) != ext0.get(k) for k in key):
            raise NLAError(
                f"{path} comes from {[ext.get(k) for k in key]}, {path0} from {[ext0.get(k) for k in key]}: "
                "train on data of one model and layer"
            )
        if d != d0:
            raise NLAError(f"{path}: d={d}, {path0} has d={d0}")


@dataclass
class VectorSet:
    vectors: torch.Tensor  # (N, d) raw
    doc_ids: list[str]
    contexts: list[str] | None  # detokenized_text_truncated, when present
    explanations: list[str] | None  # teacher explanations, when present


def load_vectors(path: str | Path, split: str = "eval") -> VectorSet:
    """Activations from an ``nla extract`` directory (one split) or a parquet file / directory of parquet;
    rows with non-finite or zero vectors are skipped (and counted in a warning)."""
    data = read_parquet(path, split=split)
    table = data.table
    if VECTOR_COL not in table.column_names or table.num_rows == 0:
        raise NLAError(f"{path} has no rows with an {VECTOR_COL} column")
    vecs = vectors(table)
    keep = torch.isfinite(vecs).all(-1) & (vecs.abs().sum(-1) > 0)
    rows = keep.nonzero().squeeze(-1).tolist()
    if len(rows) < vecs.shape[0]:
        log.warning("%s: skipped %d rows with non-finite or zero vectors", path, vecs.shape[0] - len(rows))

    def col(name: str) -> list[str] | None:
        if name not in table.column_names:
            return None
        values = table.column(name).to_pylist()
        return [str(values[i] or "") for i in rows]

    doc_ids = col("doc_id") or [str(i) for i in rows]
    found = explanation_texts(table, data.sidecar, str(path))  # explanation, api_explanation or an ar_sft prompt
    texts = None if found is None else [found[0][i] for i in rows]
    return VectorSet(vecs[keep], doc_ids, col("detokenized_text_truncated"), texts)


__all__ = [
    "check_same_source",
    "ParquetInput",
    "VECTOR_COL",
    "activation_matrix",
    "read_parquet",
    "DEFAULT_FRACTIONS",
    "SCHEMA",
    "SPLITS",
    "VectorSet",
    "assert_disjoint",
    "check_fractions",
    "chunk_stats",
    "load_vectors",
    "read_dataset_meta",
    "read_split",
    "split_files",
    "split_of",
    "stable_uniform",
    "vectors",
    "write_dataset",
]
