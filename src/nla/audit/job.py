"""``nla audit DATA --out audit.db``: explain the tokens of many documents into the audit store.

How it works, and why it resumes exactly:

1. **Plan** (driver, tokenizer only): every document of DATA not yet in this run is tokenised, its
   positions chosen (:mod:`nla.audit.plan`), and its position rows written with a **work batch number**,
   all in one transaction. Batches hold ``batch_size`` positions in document order, across documents;
   they are fixed once written.
2. **Explain** (an engine): each batch without explanations is explained in one batched pass
   (:meth:`nla.explain.api.NLA.explain_texts`: activations, AV decoding, AR round-trip score and the
   empty-explanation control) and written in ONE transaction. Greedy decoding by default; best-of-K and
   sampling are seeded per batch (``seed`` + batch number).

A killed job leaves whole batches; the rerun explains the missing batches with exactly the same inputs,
so it stores what an uninterrupted run would. A JSONL that has grown gets its new documents planned into
new batches; documents already planned are not touched. A DB made with another NLA (or other decoding
or position options) refuses to continue that run unless ``new_run`` is set. ``engine="ray"`` runs step 2
on Ray Data (:mod:`nla.audit.ray_engine`) with the same batches and writes the same rows.

>>> summary = audit("chats.jsonl", AuditConfig(out="audit.db", sample=4))   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nla.audit.config import RUN_KEYS, AuditConfig, check_config
from nla.audit.plan import ReadReport, content_hash, content_of, pick_positions, read_documents, token_rows
from nla.audit.ray_engine import ray_engine
from nla.audit.store import Store
from nla.audit.worker import explain_batch, load_nla
from nla.common.errors import NLAError
from nla.common.meta import MODEL_SIDECAR, read_model_sidecar
from nla.core.text import filtering_support
from nla.data.documents import Document
from nla.explain.api import NLA, resolve_nla_paths, sidecar_baseline
from nla.explain.inputs import encode_input
from nla.models.target import load_tokenizer, model_context_limit

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- the NLA's identity


def _file_digest(path: Path, h: Any, chunk: int = 1 << 20) -> None:
    """Name, size and the first and last MiB of a file (cheap even for large weights)."""
    size = path.stat().st_size
    h.update(f"{path.name}:{size}:".encode())
    with path.open("rb") as f:
        h.update(f.read(chunk))
        if size > 2 * chunk:
            f.seek(-chunk, 2)
            h.update(f.read(chunk))


def nla_identity(cfg: AuditConfig) -> tuple[str, dict[str, Any]]:
    """(fingerprint, description) of the NLA ``cfg`` names: hashes of both sidecars and weight files."""
    av, ar = resolve_nla_paths(cfg.av, cfg.ar, cfg.target)  # no --av: the NLA shipped for --target
    h = hashlib.sha256()
    desc: dict[str, Any] = {"av": str(Path(av).resolve()), "ar": str(Path(ar).resolve()) if ar else None}
    metas = []
    for role, d in (("av", av), ("ar", ar)):
        if d is None:
            continue
        p = Path(d)
        if not (p / MODEL_SIDECAR).is_file():
            raise NLAError(f"{p} has no {MODEL_SIDECAR}: it is not an NLA checkpoint")
        sidecar = (p / MODEL_SIDECAR).read_bytes()
        desc[f"{role}_sidecar_sha256"] = hashlib.sha256(sidecar).hexdigest()
        h.update(role.encode() + sidecar)
        for f in sorted(p.glob("*.safetensors")):
            _file_digest(f, h)
        metas.append(read_model_sidecar(p))
    ext = metas[0].get("extraction") or {}
    desc.update(
        target=cfg.target or ext.get("base_model"),
        layer=ext.get("layer_index"),
        baseline=cfg.baseline if cfg.baseline is not None else sidecar_baseline(*reversed(metas)),
    )
    if not desc["target"]:
        raise NLAError(f"the AV sidecar of {av} names no extraction.base_model: pass --target")
    return h.hexdigest()[:16], desc


# ----------------------------------------------------------------------------- runs and the plan


def open_run(store: Store, cfg: AuditConfig, nla_id: str, desc: dict[str, Any]) -> int:
    """The run to write into: the latest one when it matches this NLA and these options, a new one on
    an empty DB or with ``new_run``; otherwise one clear error."""
    config = {k: getattr(cfg, k) for k in RUN_KEYS}
    config["min_support"] = filtering_support(cfg.best_of, cfg.min_support)  # greedy runs: no effect
    runs = store.runs()
    if runs and not cfg.new_run:
        last = runs[-1]
        if last["nla_id"] != nla_id:
            raise NLAError(
                f"{store.path} run {last['run_id']} was made with another NLA ({last['nla']['av']}, "
                f"id {last['nla_id']}; this one is {nla_id}): pass --new-run to add a run with this NLA"
            )
        # runs made before min_support kept every claim; before max_tokens, read whole documents
        was_run = {"min_support": 1, "max_tokens": None, **last["config"]}
        changed = [k for k in RUN_KEYS if was_run.get(k) != config[k]]
        if changed:
            was = ", ".join(f"{k}={was_run.get(k)!r}" for k in changed)
            raise NLAError(f"{store.path} run {last['run_id']} used {was}: use the same options, or pass --new-run")
        return int(last["run_id"])
    return store.add_run(datetime.now(timezone.utc).isoformat(timespec="seconds"), nla_id, desc, config)


def plan_documents(
    store: Store,
    run_id: int,
    docs: list[Document],
    tokenizer: Any,
    cfg: AuditConfig,
    *,
    context: tuple[int | None, str] = (None, ""),
) -> dict[str, Any]:
    """Tokenise the documents new to this run, choose their positions and give them work batches, in
    one transaction. A document id already stored with other content is an error (nothing is written).

    What one document cannot give is skipped with a reason in the ``skips`` table, and the run goes on:
    a chat the tokenizer cannot render, a ``--positions`` item past its end, positions at or past the
    target's context window (``context``: its limit and where that number comes from; ``--max-tokens``
    keeps the last N tokens instead). Returns counts and the skips of this plan."""
    known = {r["doc_id"]: (r["doc_key"], r["content_hash"]) for r in store.query("SELECT * FROM documents")}
    done = {r[0] for r in store.query("SELECT doc_key FROM run_docs WHERE run_id = ?", (run_id,))}
    counts = {"documents": len(docs), "new": 0, "already_audited": 0, "without_positions": 0, "new_positions": 0}
    skips: list[dict[str, Any]] = []
    row = store.query("SELECT COALESCE(MAX(batch), -1) FROM positions WHERE run_id = ?", (run_id,))
    batch, in_batch = int(row[0][0]) + 1, 0
    with store.transaction() as db:
        for doc in docs:
            digest = content_hash(doc)
            if doc.doc_id in known:
                key, old = known[doc.doc_id]
                if old != digest:
                    raise NLAError(
                        f"document {doc.doc_id!r} changed since it was stored in {store.path}; "
                        "give it a new id or use a new database"
                    )
            else:
                content = json.dumps(content_of(doc), ensure_ascii=False)
                key = db.execute(
                    "INSERT INTO documents (doc_id, kind, source, content, content_hash) VALUES (?, ?, ?, ?, ?)",
                    (doc.doc_id, doc.kind, doc.source, content, digest),
                ).lastrowid
                known[doc.doc_id] = (key, digest)
            if key in done:
                counts["already_audited"] += 1
                continue
            picked, enc, doc_skips = _plan_one(doc, tokenizer, cfg, context)
            skips += doc_skips
            if enc is None:
                continue
            rendered, rows = token_rows(doc, enc, picked)
            db.execute(
                "INSERT INTO run_docs VALUES (?, ?, ?, ?, ?)",
                (run_id, key, rendered, json.dumps(enc.tokens, ensure_ascii=False), len(rows)),
            )
            for r in rows:
                values = [r[k] for k in ("idx", "token", "start", "end", "role", "turn", "context")]
                db.execute(
                    "INSERT INTO positions (run_id, doc_key, idx, token, start, end, role, turn, context, batch) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, key, *values, batch),
                )
                in_batch += 1
                if in_batch == cfg.batch_size:
                    batch, in_batch = batch + 1, 0
            counts["new"] += 1
            counts["new_positions"] += len(rows)
            counts["without_positions"] += not rows
        store.add_skips(db, run_id, skips)
    return {**counts, "skips": skips}


def _plan_one(
    doc: Document, tokenizer: Any, cfg: AuditConfig, context: tuple[int | None, str]
) -> tuple[list[int], Any, list[dict[str, Any]]]:
    """(positions, encoded input or None when the whole document is skipped, skips) of one document."""
    where = doc.doc_id

    def skip(kind: str, reason: str, n: int = 0) -> dict[str, Any]:
        return {"location": where, "doc_id": doc.doc_id, "kind": kind, "reason": reason, "positions": n}

    try:
        enc = encode_input(tokenizer, content_of(doc))
    except NLAError as e:
        return [], None, [skip("schema", str(e))]
    if cfg.max_tokens is not None:
        enc = enc.keep_last(cfg.max_tokens)
    limit, source = context
    every_one, problems = pick_positions(doc, enc, cfg.positions)
    picked, _ = pick_positions(doc, enc, cfg.positions, every=cfg.every, sample=cfg.sample, seed=cfg.seed, limit=limit)
    out = [skip("positions", p) for p in problems]
    past = [i for i in every_one[:: cfg.every] if limit is not None and i >= limit]
    if past:
        where_from = f" ({source})" if source else ""
        out.append(
            skip(
                "too_long",
                f"{len(enc.input_ids):,} tokens, but the target reads at most {limit:,}{where_from}: {len(past):,} "
                f"position(s) from {past[0]:,} on are past its context window (pass --max-tokens {limit} to "
                f"explain the last {limit:,} tokens instead)",
                len(past),
            )
        )
    return picked, enc, out


def pending_batches(store: Store, run_id: int) -> list[dict[str, Any]]:
    """The work batches of a run that have no explanations yet, in order, each with what a worker needs:
    ``{"batch", "docs": [{"content", "positions", "pos_ids", "tokens"}]}``."""
    rows = store.query(
        "SELECT p.batch, p.pos_id, p.doc_key, p.idx, p.token, e.pos_id IS NOT NULL AS done, d.content "
        "FROM positions p JOIN documents d USING (doc_key) LEFT JOIN explanations e USING (pos_id) "
        "WHERE p.run_id = ? ORDER BY p.batch, p.pos_id",
        (run_id,),
    )
    by_batch: dict[int, list[Any]] = {}
    for r in rows:
        by_batch.setdefault(int(r["batch"]), []).append(r)
    out = []
    for b, items in by_batch.items():
        n_done = sum(int(r["done"]) for r in items)
        if n_done == len(items):
            continue
        if n_done:
            raise NLAError(f"{store.path}: batch {b} of run {run_id} is half written (the database was edited?)")
        docs: dict[int, dict[str, Any]] = {}
        for r in items:
            d = docs.setdefault(
                r["doc_key"], {"content": json.loads(r["content"]), "positions": [], "pos_ids": [], "tokens": []}
            )
            d["positions"].append(int(r["idx"]))
            d["pos_ids"].append(int(r["pos_id"]))
            d["tokens"].append(r["token"])
        out.append({"batch": b, "docs": list(docs.values())})
    return out


def local_engine(desc: dict[str, Any], cfg: AuditConfig, nla: NLA | None = None) -> Callable[..., Iterator[Any]]:
    """An engine: ``engine(batches, opts)`` yields ``(batch, rows)`` explained in this process."""

    def run(batches: list[dict[str, Any]], opts: dict[str, Any]) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        model = nla or load_nla(desc, cfg.device, cfg.dtype)
        for work in batches:
            yield work["batch"], explain_batch(model, work, opts)

    return run


# ----------------------------------------------------------------------------- the job


def audit(data: str, cfg: AuditConfig, *, nla: NLA | None = None, progress: bool = True) -> dict[str, Any]:
    """Audit ``data`` into ``cfg.out`` (see the module docstring); returns a summary. ``nla``: an already
    loaded NLA matching ``cfg.av/ar`` (the local engine uses it instead of loading one)."""
    check_config(cfg)
    t0 = time.perf_counter()
    docs, report = read_documents(data, limit=cfg.limit)
    if report.malformed:
        log.warning("skipped %d malformed line(s) of %s, e.g. %s", report.malformed, data, report.examples[0])
    nla_id, desc = nla_identity(cfg)
    if nla is not None:
        tokenizer = nla.target.tokenizer
        context = nla.target.context_window()
    else:
        tokenizer = load_tokenizer(str(desc["target"]))
        context = model_context_limit(str(desc["target"]), tokenizer)
    if cfg.max_tokens is not None and context[0] is not None and cfg.max_tokens > context[0]:
        raise NLAError(f"--max-tokens {cfg.max_tokens:,} is more than {desc['target']} reads: at most {context[0]:,}")
    with Store(cfg.out, create=True, timeout=cfg.timeout) as store:
        store.lock_writer()
        run_id = open_run(store, cfg, nla_id, desc)
        with store.transaction() as db:
            store.add_skips(db, run_id, line_skips(report))
        counts = plan_documents(store, run_id, docs, tokenizer, cfg, context=context)
        for k in counts["skips"]:
            log.warning("skipped %s: %s", k["location"], k["reason"])
        batches = pending_batches(store, run_id)
        total = sum(len(d["positions"]) for b in batches for d in b["docs"])
        keys = ("max_new_tokens", "best_of", "temperature", "seed", "min_support", "max_tokens")
        opts = {k: getattr(cfg, k) for k in keys}
        if cfg.engine == "ray":
            engine = ray_engine(desc, cfg)
        else:
            engine = local_engine(desc, cfg, nla)
        explained = 0
        t1 = time.perf_counter()
        from tqdm.auto import tqdm

        with tqdm(total=total, unit="pos", desc="audit", disable=not progress or total == 0) as bar:
            for _batch, rows in engine(batches, opts) if batches else ():
                store.write_explanations(rows)
                explained += len(rows)
                bar.update(len(rows))
        seconds = time.perf_counter() - t1
        stored = store.query(
            "SELECT COUNT(*) FROM explanations JOIN positions USING (pos_id) WHERE run_id = ?", (run_id,)
        )
        all_skips = store.skips(run_id)
    planned = {k: v for k, v in counts.items() if k != "skips"}
    return {
        "db": str(cfg.out),
        "run": run_id,
        "nla": nla_id,
        "engine": cfg.engine,
        "documents": {**planned, "malformed_lines": report.malformed, "malformed_examples": report.examples},
        "positions": {"explained_now": explained, "stored": int(stored[0][0])},
        "skipped": skip_summary(all_skips),
        "seconds": round(time.perf_counter() - t0, 2),
        "positions_per_second": round(explained / seconds, 3) if explained and seconds > 0 else None,
    }


def line_skips(report: ReadReport) -> list[dict[str, Any]]:
    """The malformed lines of a read as skip records."""
    return [{"location": w, "doc_id": None, "kind": k, "reason": r, "positions": 0} for w, k, r in report.skipped]


def skip_summary(skips: list[dict[str, Any]], examples: int = 10) -> dict[str, Any]:
    """Counts of a run's skips (all of them, this and earlier invocations) by kind, and the first few."""
    by_kind: dict[str, int] = {}
    for k in skips:
        by_kind[k["kind"]] = by_kind.get(k["kind"], 0) + 1
    return {
        "total": len(skips),
        "positions": sum(int(k["positions"]) for k in skips),
        "by_kind": by_kind,
        "examples": [f"{k['location']}: {k['reason']}" for k in skips[:examples]],
    }


__all__ = [
    "AuditConfig",
    "audit",
    "check_config",
    "line_skips",
    "skip_summary",
    "explain_batch",
    "load_nla",
    "nla_identity",
    "pending_batches",
    "plan_documents",
]
