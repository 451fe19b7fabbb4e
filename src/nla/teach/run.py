"""``nla teach``: ask a teacher to explain every row of an activation split (the warm-start data).

Input: an extraction directory (``<data>/<split>/part-*.parquet`` + sidecars). Output: one parquet file
with the input columns plus ``explanation`` (features, one per line), ``response`` (the explanation in
``<explanation>`` tags: the official AV-SFT column) and ``teacher``; and ``<out>.nla_meta.yaml``
(``kind: nla_dataset``: the input sidecar's fields, the teacher, and drop counts). Rows whose answer
fails strict extraction (:func:`nla.teach.base.parse_answer`) are left out and counted by reason.

Robustness: rows are processed in chunks written atomically to ``<out>.work/``, so a killed run resumes
without asking again for finished rows; answers are cached in sqlite (``nla.common.paths.cache_dir("teacher")``)
keyed by (teacher name, model, instruction version, context), so identical contexts are never asked
twice; API teachers run ``concurrency`` requests in threads and retry 429/5xx with backoff.

>>> teach(TeachConfig(data="runs/acts", split="ar_sft", teacher="offline", out="runs/ar_sft.parquet"))  # doctest: +SKIP
TeachResult(out=PosixPath('runs/ar_sft.parquet'), n_rows=2500, n_kept=2500, drops={}, ...)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from nla.common.config import option
from nla.common.errors import NLAError
from nla.common.meta import dataset_sidecar_path, write_sidecar
from nla.common.paths import atomic_write_bytes, cache_dir
from nla.core.text import wrap_explanation
from nla.data.activations import ParquetInput, read_parquet
from nla.teach.api import public_url
from nla.teach.base import INSTRUCTION_VERSION, Teacher, TeacherOptions, parse_answer
from nla.teach.registry import make_teacher

log = logging.getLogger(__name__)

CONTEXT_COLUMN = "detokenized_text_truncated"
EXPLANATION_FORMAT = "features, one per line"


@dataclass
class TeachConfig:
    data: str = option("", "Activation dataset directory written by `nla extract`.")
    split: str = option("ar_sft", "Split to explain (av_sft, ar_sft, rl, eval).")
    out: str = option("", "Output parquet file; its sidecar is written to <out>.nla_meta.yaml.")
    teacher: str = option(
        "offline", "Teacher: offline (no LLM), hf (local model), anthropic, openai (any compatible server)."
    )
    model: str = option(
        "",
        "Teacher model. offline: the target (default: the extraction's base_model); hf: default smollm2-135m; "
        "anthropic: default claude-haiku-4-5; openai: default gpt-4o-mini.",
    )
    base_url: str = option(
        "", "API base URL (anthropic: ANTHROPIC_BASE_URL; openai: OPENAI_BASE_URL, e.g. http://localhost:8000/v1)."
    )
    concurrency: int = option(8, "Parallel requests for API teachers.")
    limit: int = option(0, "Explain only the first N rows of the split (0 = all).")
    chunk_size: int = option(256, "Rows per work chunk; a killed run resumes after the last finished chunk.")
    cache: bool = option(True, "Reuse and store answers in the teacher cache (sqlite under the nla cache).")
    max_tokens: int = option(400, "Answer length cap in tokens (API max_tokens / hf max_new_tokens).")
    temperature: float | None = option(None, "Sampling temperature for API teachers (default: the server's).")
    retries: int = option(6, "Retries per request on HTTP 429/5xx and connection errors.")
    backoff: float = option(1.0, "First retry delay in seconds; doubled each retry, with seeded jitter.")
    timeout: float = option(120.0, "Seconds per API request.")
    seed: int = option(0, "Seed of the retry jitter.")
    tail_tokens: int = option(16, "offline: tokens of the context tail to quote.")
    top_k: int = option(4, "offline: top next-token predictions of the target to list.")
    style: str = option(
        "full",
        "offline: 'full' (setting + salient words, tail quote, final token), 'compact' (final token and "
        "next-token predictions first, a short quote, the setting; ~63 tokens) or 'rich' (compact plus the topic, "
        "salient words, language, the chat's speaker and request, the next token's kind; ~91 tokens) or 'open' "
        "(rich, with the topic named from WordNet in open vocabulary, or 'unclear'; needs nla[lexicon]).",
    )
    batch_size: int = option(8, "hf/offline: sequences per generate/forward batch.")
    device: str = option("cpu", "hf/offline: torch device.")

    def teacher_options(self, base_model: str | None = None) -> TeacherOptions:
        model = self.model or (base_model or "" if self.teacher == "offline" else "")
        return TeacherOptions(
            model=model, base_url=self.base_url, max_tokens=self.max_tokens, temperature=self.temperature,
            retries=self.retries, backoff=self.backoff, timeout=self.timeout, seed=self.seed,
            tail_tokens=self.tail_tokens, top_k=self.top_k, style=self.style, batch_size=self.batch_size,
            device=self.device,
        )  # fmt: skip


@dataclass
class TeachResult:
    out: Path  # the output parquet
    n_rows: int  # rows of the input (after --limit)
    n_kept: int  # rows written
    drops: dict[str, int] = field(default_factory=dict)  # dropped rows by reason
    n_asked: int = 0  # contexts sent to the teacher by this run
    n_cached: int = 0  # contexts answered from the cache
    n_resumed: int = 0  # rows restored from an interrupted earlier run
    seconds: float = 0.0


class AnswerCache:
    """Raw teacher answers in sqlite, keyed by (teacher name, model, version, context). Thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL)")
            self._db.commit()

    @staticmethod
    def key(teacher: Teacher, context: str) -> str:
        ident = json.dumps([teacher.name, teacher.model, teacher.version, context], ensure_ascii=False)
        return hashlib.sha256(ident.encode("utf-8")).hexdigest()

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put_many(self, items: list[tuple[str, str]]) -> None:
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO answers (key, answer) VALUES (?, ?)", items)
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()


def default_cache() -> AnswerCache:
    return AnswerCache(cache_dir("teacher") / "answers.sqlite")


# ----------------------------------------------------------------------------------- input


def read_input(data: Path, split: str, limit: int = 0) -> ParquetInput:
    """The rows of ``<data>/<split>`` (first ``limit`` if > 0) and their sidecar (the first shard's, the
    official per-file contract, else the dataset summary)."""
    inp = read_parquet(data, split=split, require=[CONTEXT_COLUMN])
    if not inp.sidecar:
        log.warning(
            "no nla_meta.yaml sidecar found for %s/%s; the output sidecar will lack extraction facts", data, split
        )
    return ParquetInput(inp.table.slice(0, limit) if limit > 0 else inp.table, inp.files, inp.sidecar)


# ----------------------------------------------------------------------------------- work dir


def _fingerprint(contexts: list[str]) -> str:
    h = hashlib.sha256()
    for c in contexts:
        h.update(c.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def open_work(work: Path, manifest: dict[str, Any]) -> dict[int, pa.Table]:
    """Create ``work`` or check that it belongs to the same run; return the finished chunks."""
    mpath = work / "manifest.json"
    if mpath.exists():
        old = json.loads(mpath.read_text(encoding="utf-8"))
        diff = sorted(k for k in manifest if old.get(k) != manifest[k])
        if diff:
            raise NLAError(
                f"{work} holds an unfinished run with different {', '.join(diff)}; delete it or choose another --out"
            )
    else:
        work.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(mpath, json.dumps(manifest, indent=1).encode("utf-8"))
    return {int(p.stem.split("-")[1]): read_parquet(p).table for p in sorted(work.glob("chunk-*.parquet"))}


def write_table(table: pa.Table, path: Path) -> None:
    """Write a parquet file through a temporary file and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------- asking


class _Asker:
    """Answers a list of contexts: cache first, then the teacher (threads for parallel teachers)."""

    def __init__(self, teacher: Teacher, cache: AnswerCache | None, concurrency: int, bar: Any) -> None:
        self.teacher, self.cache, self.concurrency, self.bar = teacher, cache, max(1, concurrency), bar
        self.asked = self.cached = 0

    def __call__(self, contexts: list[str]) -> list[str | None]:
        mult = Counter(contexts)
        got: dict[str, str | None] = {}
        keys = {c: AnswerCache.key(self.teacher, c) for c in mult} if self.cache else {}
        for c in mult:
            hit = self.cache.get(keys[c]) if self.cache else None
            if hit is not None:
                got[c] = hit
                self.cached += 1
                self.bar.update(mult[c])
        todo = [c for c in mult if c not in got]
        step = max(1, int(self.teacher.max_batch))
        batches = [todo[i : i + step] for i in range(0, len(todo), step)]

        def record(batch: list[str], answers: list[str | None]) -> None:
            if len(answers) != len(batch):
                raise NLAError(f"teacher {self.teacher.name} returned {len(answers)} answers for {len(batch)} contexts")
            got.update(zip(batch, answers, strict=True))
            if self.cache:
                self.cache.put_many([(keys[c], a) for c, a in zip(batch, answers, strict=True) if a is not None])
            self.asked += len(batch)
            self.bar.update(sum(mult[c] for c in batch))

        if self.teacher.parallel and self.concurrency > 1 and len(batches) > 1:
            with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="teach") as pool:
                futures = {pool.submit(self.teacher.answer, b): b for b in batches}
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for f in done:
                        if f.exception() is not None:
                            pool.shutdown(wait=True, cancel_futures=True)
                            raise f.exception()  # type: ignore[misc]
                        record(futures[f], f.result())
        else:
            for b in batches:
                record(b, self.teacher.answer(b))
        return [got[c] for c in contexts]


# ----------------------------------------------------------------------------------- the stage


def teach(cfg: TeachConfig, teacher: Teacher | None = None, *, cache: AnswerCache | None = None) -> TeachResult:
    """Explain every row of ``cfg.split`` with a teacher and write ``cfg.out`` (+ sidecar). Resumable."""
    t0 = time.perf_counter()
    if not cfg.data or not cfg.out:
        raise NLAError("teach needs --data (an extraction directory) and --out (a .parquet file)")
    if cfg.chunk_size < 1 or cfg.concurrency < 1:
        raise NLAError("--chunk-size and --concurrency must be >= 1")
    data, out = Path(cfg.data), Path(cfg.out)
    if not data.is_dir():
        raise NLAError(f"--data {data} is not a directory")
    inp = read_input(data, cfg.split, cfg.limit)
    table, meta_in = inp.table, inp.sidecar
    if teacher is None:
        base_model = (meta_in.get("extraction") or {}).get("base_model")
        teacher = make_teacher(cfg.teacher, cfg.teacher_options(base_model))
    contexts = [str(c) for c in table.column(CONTEXT_COLUMN).to_pylist()]
    n = len(contexts)
    where = public_url(str(getattr(teacher, "base_url", "") or "")) or None
    log.info(
        "teaching %d %s rows with %s (%s)%s", n, cfg.split, teacher.name, teacher.model, f" at {where}" if where else ""
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(str(out) + ".work")
    manifest = {
        "data": str(data.resolve()), "split": cfg.split, "n_rows": n, "chunk_size": cfg.chunk_size,
        "inputs": _fingerprint(contexts), "teacher": teacher.name, "model": teacher.model, "version": teacher.version,
    }  # fmt: skip
    done = open_work(work, manifest)
    n_chunks = math.ceil(n / cfg.chunk_size)
    resumed = sum(t.num_rows for i, t in done.items() if i < n_chunks)
    if resumed:
        log.info("resuming: %d rows already done in %s", resumed, work)

    own_cache = cache is None and cfg.cache
    store = default_cache() if own_cache else (cache if cfg.cache else None)
    bar = tqdm(total=n, initial=resumed, unit="row", desc=f"teach[{teacher.name}]", dynamic_ncols=True)
    asker = _Asker(teacher, store, cfg.concurrency, bar)
    try:
        for ci in range(n_chunks):
            if ci in done:
                continue
            lo, hi = ci * cfg.chunk_size, min(n, (ci + 1) * cfg.chunk_size)
            parsed = [parse_answer(a) for a in asker(contexts[lo:hi])]
            chunk = pa.table(
                {
                    "row": pa.array(range(lo, hi), pa.int64()),
                    "explanation": pa.array([e for e, _ in parsed], pa.string()),
                    "drop_reason": pa.array([r for _, r in parsed], pa.string()),
                }
            )
            write_table(chunk, work / f"chunk-{ci:05d}.parquet")
            done[ci] = chunk
    finally:
        bar.close()
        if own_cache and store is not None:
            store.close()

    results = pa.concat_tables([done[i] for i in range(n_chunks)]) if n_chunks else None
    explanations = results.column("explanation").to_pylist() if results is not None else []
    reasons = results.column("drop_reason").to_pylist() if results is not None else []
    keep = [i for i, e in enumerate(explanations) if e is not None]
    drops = dict(sorted(Counter(r for r in reasons if r is not None).items()))
    label = f"{teacher.name}:{teacher.model}"
    kept_expl = [explanations[i] for i in keep]
    output = table.take(pa.array(keep, pa.int64()))
    output = output.append_column("explanation", pa.array(kept_expl, pa.string()))
    output = output.append_column("response", pa.array([wrap_explanation(e) for e in kept_expl], pa.string()))
    output = output.append_column("teacher", pa.array([label] * len(keep), pa.string()))

    meta = {k: v for k, v in meta_in.items() if k not in ("n_rows", "num_rows", "rows", "file", "shard")}
    meta["kind"] = "nla_dataset"
    meta["n_rows"] = len(keep)
    if "row_count" in meta:  # the official contract's count (nla extract part sidecars carry it)
        meta["row_count"] = len(keep)
    meta["teacher"] = {"name": teacher.name, "model": teacher.model, "version": teacher.version, "base_url": where}
    meta["teach"] = {
        "data": str(data), "split": cfg.split, "rows_in": n, "rows_out": len(keep), "drops": drops,
        "explanation_format": EXPLANATION_FORMAT, "instruction_version": INSTRUCTION_VERSION,
    }  # fmt: skip
    write_sidecar(dataset_sidecar_path(out), meta)
    write_table(output, out)
    shutil.rmtree(work, ignore_errors=True)
    res = TeachResult(out, n, len(keep), drops, asker.asked, asker.cached, resumed, time.perf_counter() - t0)
    log.info("wrote %d/%d rows to %s (drops: %s) in %.1f s", res.n_kept, n, out, drops or "none", res.seconds)
    return res


__all__ = [
    "AnswerCache",
    "TeachConfig",
    "TeachResult",
    "default_cache",
    "open_work",
    "read_input",
    "teach",
    "write_table",
]
