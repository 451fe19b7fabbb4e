"""``nla extract``: residual-stream activations of a target model at layer L, N positions per document.

How it works:

1. Documents are tokenised (text with ``tokenizer(text)``, chat with ``apply_chat_template`` in one step)
   and capped at ``max_tokens``. Positions are drawn in ``[start, n_tokens)`` by a per-document RNG seeded
   from ``(seed, doc_id)``, so they do not depend on batch size, order or sharding. ``start = skip`` for
   text; for chat it is ``min(skip, tokens before the first non-system message's content)``, so chats
   behind a ~20-token system prompt still yield positions. Too-short documents are skipped and counted.
2. Documents are processed in fixed chunks of ``chunk_docs`` documents in ``doc_id`` order. Inside a
   chunk, batches are bucketed by length (token budget ``batch_tokens``, right padding), each document is
   cut after its last sampled position, and the forward pass stops at block L (``Target.hidden_at``).
3. Each finished chunk is written atomically to ``<out>.incomplete/chunks/``; a re-run of the same command
   skips finished chunks (resume after SIGKILL). Settings are fingerprinted: a work directory made with
   other settings is refused. Under ``accelerate launch`` ranks take chunks round-robin; rank 0 assembles
   the final layout (see :mod:`nla.data.activations`) and renames it into ``<out>``.

>>> from nla.data.extract import ExtractConfig, extract
>>> res = extract(ExtractConfig(corpus="default", out="acts"))    # doctest: +SKIP
>>> res.n_rows, round(res.tokens_per_s)                            # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from nla.common.config import option
from nla.common.errors import NLAError
from nla.common.paths import check_writable_dir
from nla.data.activations import (
    DEFAULT_FRACTIONS,
    SPLITS,
    STATS_KEY,
    check_fractions,
    chunk_stats,
    read_dataset_meta,
    split_of,
    write_dataset,
)
from nla.data.corpus import load_corpus
from nla.data.documents import Document
from nla.data.positions import Encoded, choose_positions, encode_document, plan_batches
from nla.models.target import DEFAULT_TARGET, Target

log = logging.getLogger(__name__)

WORK_SUFFIX = ".incomplete"
SETTINGS_FILE = "settings.json"


@dataclass
class ExtractConfig:
    model: str = option(DEFAULT_TARGET, "Target model: embedded name, HF id or local HF directory.")
    corpus: str = option("default", "Corpus spec: 'default' or a path to .txt / folder / JSONL / parquet.")
    out: str = option("activations", "Output dataset directory (written atomically).")
    layer: int | None = option(
        None, "Layer L (output of block L = HF hidden_states[L+1]); default round(2/3 n_layers)."
    )
    positions_per_doc: int = option(10, "Activation positions sampled per document.")
    skip: int = option(50, "Skip the first SKIP tokens of a document (chat: at most the system prompt + turn header).")
    max_tokens: int = option(512, "Cap each document at this many tokens.")
    batch_tokens: int = option(
        1024, "Token budget of one forward batch (padded size x length); ~1k is fastest on CPU, raise it on a GPU."
    )
    seed: int = option(0, "Seed of the per-document position RNG and of the split hash.")
    split_fractions: list[float] = option(list(DEFAULT_FRACTIONS), "Fractions of documents for av_sft ar_sft rl eval.")
    limit_docs: int | None = option(None, "Use only the first N documents of the corpus.")
    overwrite: bool = option(False, "Replace an existing output directory (or a stale work directory).")
    dtype: str = option(
        "float32",
        "Model dtype for the forward pass (vectors are stored as float32).",
        choices=["float32", "bfloat16", "float16"],
    )
    device: str = option("auto", "Device: 'auto' (this rank's accelerator or CPU), 'cpu', 'cuda:0', ...")
    chunk_docs: int = option(256, "Documents per resumable chunk (part of the settings fingerprint).")
    shard_rows: int = option(200_000, "Maximum rows per output parquet part.")

    def __post_init__(self) -> None:
        for name in ("positions_per_doc", "max_tokens", "batch_tokens", "chunk_docs", "shard_rows"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.skip < 0:
            raise ValueError("skip must be >= 0")
        if self.limit_docs is not None and self.limit_docs < 1:
            raise ValueError("limit_docs must be >= 1")


@dataclass
class ExtractResult:
    out: Path  # the finished dataset directory
    n_docs: int  # documents in the corpus (after limit_docs)
    n_used_docs: int  # documents that yielded at least one position
    n_skipped_short: int  # documents shorter than their skip + 1
    n_rows: int  # activation rows written, all splits
    rows_per_split: dict[str, int]
    dataset_tokens: int  # tokens of the used documents (after the max_tokens cap)
    tokens: int  # tokens forwarded by THIS run on this rank (0 when everything was already done)
    seconds: float  # wall time of this call
    tokens_per_s: float  # tokens / forward time of this run


@torch.inference_mode()
def extract_chunk(
    target: Target,
    docs: Sequence[Document],
    layer: int,
    cfg: ExtractConfig,
    fractions: Sequence[float],
    on_batch: Any = None,
) -> tuple[pa.Table, dict[str, int]]:
    """Activation rows of ``docs`` (ordered by input order, then position) plus a ``split`` column."""
    tok = target.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    stats = {"docs": len(docs), "used": 0, "skipped_short": 0, "rows": 0, "tokens": 0, "forwarded": 0}
    jobs: list[tuple[int, Encoded, list[int]]] = []
    for i, doc in enumerate(docs):
        enc = encode_document(tok, doc, cfg.max_tokens, cfg.skip)
        pos = choose_positions(doc.doc_id, len(enc.ids), enc.start, cfg.positions_per_doc, cfg.seed)
        if not pos:
            stats["skipped_short"] += 1
            log.debug("document %s has %d tokens, fewer than skip %d + 1: skipped", doc.doc_id, len(enc.ids), enc.start)
            continue
        stats["used"] += 1
        stats["tokens"] += len(enc.ids)
        jobs.append((i, enc, pos))
    lengths = [pos[-1] + 1 for _, _, pos in jobs]  # causal: nothing after the last position matters
    vecs: dict[int, torch.Tensor] = {}  # job index -> (n_pos, d)
    device = target.device
    for batch in plan_batches(lengths, cfg.batch_tokens):
        width = max(lengths[j] for j in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
        for r, j in enumerate(batch):
            ids[r, : lengths[j]] = torch.tensor(jobs[j][1].ids[: lengths[j]])
            mask[r, : lengths[j]] = 1
        hidden = target.hidden_at(ids.to(device), mask.to(device), layer)  # (B, T, d)
        for r, j in enumerate(batch):
            vecs[j] = hidden[r, jobs[j][2]].float().cpu()  # (n_pos, d)
        n_real = sum(lengths[j] for j in batch)
        stats["forwarded"] += n_real
        if on_batch is not None:
            on_batch(n_real)
    cols: dict[str, list[Any]] = {k: [] for k in ("vec", "doc_id", "position", "text", "token", "split")}
    for j, (_, enc, pos) in enumerate(jobs):
        split = split_of(enc.doc_id, fractions, cfg.seed)
        for p, v in zip(pos, vecs[j], strict=True):
            cols["vec"].append(v.numpy())
            cols["doc_id"].append(enc.doc_id)
            cols["position"].append(p)
            cols["text"].append(tok.decode(enc.ids[: p + 1], skip_special_tokens=False))
            cols["token"].append(tok.decode([enc.ids[p]], skip_special_tokens=False))
            cols["split"].append(split)
    stats["rows"] = len(cols["doc_id"])
    table = pa.table(
        {
            "activation_vector": pa.array(cols["vec"], type=pa.list_(pa.float32())),
            "doc_id": pa.array(cols["doc_id"], type=pa.string()),
            "position": pa.array(cols["position"], type=pa.int32()),
            "n_raw_tokens": pa.array([p + 1 for p in cols["position"]], type=pa.int32()),
            "activation_layer": pa.array([layer] * stats["rows"], type=pa.int32()),
            "detokenized_text_truncated": pa.array(cols["text"], type=pa.string()),
            "token": pa.array(cols["token"], type=pa.string()),
            "split": pa.array(cols["split"], type=pa.string()),
        }
    )
    return table.replace_schema_metadata({STATS_KEY: json.dumps(stats).encode()}), stats


# ----------------------------------------------------------------------------------------- the run


def work_dir_for(out: Path) -> Path:
    return out.with_name(out.name + WORK_SUFFIX)


def _corpus_digest(docs: Sequence[Document]) -> str:
    h = hashlib.sha256()
    for d in docs:
        body = d.text if d.messages is None else json.dumps(list(d.messages), sort_keys=True)
        h.update(json.dumps([d.doc_id, d.kind, body]).encode("utf-8"))
    return h.hexdigest()


def settings_of(
    cfg: ExtractConfig, target: Target, layer: int, docs: Sequence[Document], *, corpus: str | None = None
) -> dict[str, Any]:
    """Everything that determines the output rows; stored in the work dir and the summary."""
    return {
        "base_model": target.name,
        "d_model": target.d_model,
        "n_layers": target.n_layers,
        "layer_index": layer,
        "corpus": cfg.corpus if corpus is None else corpus,
        "limit_docs": cfg.limit_docs,
        "positions_per_doc": cfg.positions_per_doc,
        "skip": cfg.skip,
        "max_tokens": cfg.max_tokens,
        "seed": cfg.seed,
        "split_fractions": dict(zip(SPLITS, check_fractions(cfg.split_fractions), strict=True)),
        "chunk_docs": cfg.chunk_docs,
        "dtype": cfg.dtype,
        "n_docs": len(docs),
        "corpus_sha256": _corpus_digest(docs),
    }


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def load_documents(cfg: ExtractConfig) -> list[Document]:
    return list(load_corpus(cfg.corpus, limit=cfg.limit_docs))


def _canonical(docs: Sequence[Document], limit: int | None) -> list[Document]:
    docs = list(docs)[:limit] if limit is not None else list(docs)
    if not docs:
        raise NLAError("the corpus holds no documents")
    ordered = sorted(docs, key=lambda d: d.doc_id)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if a.doc_id == b.doc_id:
            raise NLAError(f"the corpus has two documents with doc_id {a.doc_id!r}; doc ids must be unique")
    return ordered


def _prepare_dirs(out: Path, work: Path, fp: str, settings: dict[str, Any], cfg: ExtractConfig, is_main: bool) -> bool:
    """Check ``out`` and the work dir; return True when ``out`` already holds this exact dataset."""
    empty_dir = out.is_dir() and not any(out.iterdir())  # made by the user: not a dataset, replaced at the end
    if out.exists() and not empty_dir:
        try:
            done = read_dataset_meta(out).get("provenance", {}).get("fingerprint") == fp
        except NLAError:
            done = False
        if done and not cfg.overwrite:
            return True
        if not cfg.overwrite:
            raise NLAError(f"output {out} already exists (made with other settings); pass --overwrite to replace it")
    settings_path = work / SETTINGS_FILE
    if settings_path.exists():
        try:
            old = json.loads(settings_path.read_text(encoding="utf-8")).get("fingerprint")
        except (OSError, ValueError):
            old = None
        if old != fp and not cfg.overwrite:
            raise NLAError(f"work directory {work} was started with other settings; delete it or pass --overwrite")
        if old != fp and is_main:
            shutil.rmtree(work)
    if is_main:
        try:
            (work / "chunks").mkdir(parents=True, exist_ok=True)
            for stale in (work / "chunks").glob(".*.tmp*"):
                stale.unlink(missing_ok=True)
            if not settings_path.exists():
                tmp = settings_path.with_name(f".{SETTINGS_FILE}.tmp")
                tmp.write_text(json.dumps({"fingerprint": fp, "settings": settings}, indent=2), encoding="utf-8")
                os.replace(tmp, settings_path)
        except OSError as e:
            raise NLAError(f"cannot write the output under {out.parent}: {e.strerror or e}") from e
    return False


class _Meter:
    """Counts forwarded tokens and shows tokens/s in the progress bar."""

    def __init__(self, bar: Any) -> None:
        self.bar, self.tokens, self.t0 = bar, 0, time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def add(self, n: int) -> None:
        self.tokens += n
        self.bar.set_postfix_str(f"{self.tokens / max(self.seconds(), 1e-9):,.0f} tok/s", refresh=False)


def _write_chunk(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _wants_cpu(cfg: ExtractConfig) -> bool:
    """CPU ranks need ``PartialState(cpu=True)`` to join a gloo process group (torchrun on CPU)."""
    if cfg.device == "cpu" or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return True
    return cfg.device == "auto" and not torch.cuda.is_available()


def _resolve_device(cfg: ExtractConfig, state: Any) -> str:
    return str(state.device) if cfg.device == "auto" else cfg.device


def extract(
    cfg: ExtractConfig, target: Target | None = None, *, documents: Sequence[Document] | None = None
) -> ExtractResult:
    """Run (or resume) an extraction; returns the dataset-level counts and this run's throughput.

    ``documents`` replaces ``cfg.corpus`` (tests, notebooks); ``target`` replaces loading ``cfg.model``.
    Under ``accelerate launch`` every rank calls this; each takes its share of the chunks.
    """
    from accelerate import PartialState

    t0 = time.perf_counter()
    state = PartialState(cpu=_wants_cpu(cfg))
    fractions = check_fractions(cfg.split_fractions)
    out = check_writable_dir(cfg.out)  # before the model loads and the corpus is built, not after
    work = work_dir_for(out)
    if target is None:
        from nla.models.target import load_target

        target = load_target(cfg.model, dtype=cfg.dtype, device=_resolve_device(cfg, state))
    layer = target.check_layer(target.default_layer if cfg.layer is None else int(cfg.layer))
    docs = _canonical(documents if documents is not None else load_documents(cfg), cfg.limit_docs)
    settings = settings_of(cfg, target, layer, docs, corpus=None if documents is None else "in-memory")
    fp = fingerprint(settings)
    already = _prepare_dirs(out, work, fp, settings, cfg, state.is_main_process)
    state.wait_for_everyone()
    if already:
        if state.is_main_process:
            shutil.rmtree(work, ignore_errors=True)  # killed between the final rename and the cleanup
        log.info("%s already holds this dataset (fingerprint %s): nothing to do", out, fp)
        return result_from_summary(out, tokens=0, seconds=time.perf_counter() - t0, fwd_seconds=0.0)

    chunks = [docs[i : i + cfg.chunk_docs] for i in range(0, len(docs), cfg.chunk_docs)]
    paths = [work / "chunks" / f"chunk-{i:05d}.parquet" for i in range(len(chunks))]
    mine = [i for i in range(len(chunks)) if i % state.num_processes == state.process_index and not paths[i].exists()]
    done = len(chunks) - sum(1 for p in paths if not p.exists())
    if done and state.is_main_process:
        log.info("resuming %s: %d of %d chunks already done", work, done, len(chunks))
    if state.num_processes > 1:
        log.info("rank %d/%d (%s): %d chunks to do", state.process_index, state.num_processes, state.backend, len(mine))
    bar = tqdm(
        total=sum(len(chunks[i]) for i in mine),
        unit="doc",
        desc=f"extract L{layer}",
        disable=not state.is_local_main_process,
    )
    meter = _Meter(bar)
    for i in mine:
        table, _ = extract_chunk(target, chunks[i], layer, cfg, fractions, meter.add)
        _write_chunk(table, paths[i])
        bar.update(len(chunks[i]))
    tokens, fwd_s = meter.tokens, meter.seconds()
    bar.close()
    state.wait_for_everyone()
    if sum(chunk_stats(p).get("used", 0) for p in paths) == 0:
        if state.is_main_process:
            shutil.rmtree(work, ignore_errors=True)
        raise NLAError(
            f"no usable document: all {len(docs)} are shorter than skip + 1 tokens (skip={cfg.skip}, "
            f"max_tokens={cfg.max_tokens}); lower --skip or use longer documents"
        )
    if state.is_main_process:
        meta = {
            "d_model": target.d_model,
            # exactly the fields of the official NLAExtractionMeta (its reader rejects unknown keys)
            "extraction": {
                "base_model": target.name,
                "d_model": target.d_model,
                "layer_index": layer,
                "norm": "none",  # vectors are stored raw
                "corpus": str(settings["corpus"]),
                "corpus_slice": {"start": 0, "length": int(settings["n_docs"])},
                "positions_per_doc": cfg.positions_per_doc,
            },
            "provenance": {**settings, "fingerprint": fp, "batch_tokens": cfg.batch_tokens},
        }
        summary = write_dataset(paths, out, meta, shard_rows=cfg.shard_rows)
        shutil.rmtree(work, ignore_errors=True)
        log.info(
            "wrote %s: %d rows from %d documents (%d skipped as too short)",
            out,
            summary["n_rows"],
            summary["n_used_docs"],
            summary["n_skipped_short"],
        )
    state.wait_for_everyone()
    return result_from_summary(out, tokens=tokens, seconds=time.perf_counter() - t0, fwd_seconds=fwd_s)


def result_from_summary(out: Path, *, tokens: int, seconds: float, fwd_seconds: float) -> ExtractResult:
    s = read_dataset_meta(out)
    return ExtractResult(
        out=out,
        n_docs=int(s["n_docs"]),
        n_used_docs=int(s["n_used_docs"]),
        n_skipped_short=int(s["n_skipped_short"]),
        n_rows=int(s["n_rows"]),
        rows_per_split={k: int(v["rows"]) for k, v in s["splits"].items()},
        dataset_tokens=int(s["n_tokens"]),
        tokens=tokens,
        seconds=seconds,
        tokens_per_s=tokens / fwd_seconds if fwd_seconds > 0 else 0.0,
    )


__all__ = [
    "Encoded",
    "ExtractConfig",
    "ExtractResult",
    "choose_positions",
    "encode_document",
    "extract",
    "extract_chunk",
    "plan_batches",
    "work_dir_for",
]
