"""Benchmark ``nla audit`` against ``NLA.explain`` called one text at a time, on the same positions.

The shipped NLA, greedy decoding (best-of 1), the shipped sample chats: ``--docs`` chats, ``--sample``
random assistant tokens of each (the selection ``nla audit --sample`` makes). The baseline calls
``NLA.explain(chat, positions)`` once per chat (its batches hold one chat's positions); the audit job
(:func:`nla.audit.job.audit`, into a temporary DB, the NLA already loaded) decodes ``--batch-size``
positions at a time across chats and also writes every row to SQLite. Prints explanations/s of both, the
speed-up, seconds and CPU-seconds per 1k positions, and how many of the audit's explanations equal the
baseline's (greedy: batching should not change them, up to floating-point ties).

    python bench/audit.py                          # 16 chats x 4 tokens, batch 64, 1 thread
    python bench/audit.py --docs 8 --sample 8 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=16, help="Sample chats to audit.")
    ap.add_argument("--sample", type=int, default=4, help="Random assistant tokens per chat.")
    ap.add_argument("--batch-size", type=int, default=64, help="Positions per audit batch (nla audit's default).")
    ap.add_argument("--max-new-tokens", type=int, default=150)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the dev machine is shared).")
    ap.add_argument("--skip-baseline", action="store_true", help="Time the audit only (no one-at-a-time run).")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    from nla.audit.job import AuditConfig, audit
    from nla.audit.plan import SAMPLE_CHATS, content_of, read_documents, select_positions
    from nla.explain.api import NLA
    from nla.explain.inputs import encode_input

    nla = NLA.from_pretrained()
    docs, _ = read_documents(SAMPLE_CHATS, limit=args.docs)
    picked = [select_positions(d, encode_input(nla.target.tokenizer, content_of(d)), sample=args.sample) for d in docs]
    n = sum(len(p) for p in picked)
    nla.explain(content_of(docs[0]), picked[0][:1], best_of=1, max_new_tokens=4)  # warm-up

    cpu0, t0 = time.process_time(), time.perf_counter()
    single = [
        nla.explain(content_of(d), p, best_of=1, max_new_tokens=args.max_new_tokens)
        for d, p in (() if args.skip_baseline else zip(docs, picked, strict=True))
    ]
    base_s, base_cpu = max(1e-9, time.perf_counter() - t0), time.process_time() - cpu0

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "chats.jsonl"
        data.write_text("".join(json.dumps({"id": d.doc_id, "messages": content_of(d)}) + "\n" for d in docs))
        cfg = AuditConfig(
            out=str(Path(tmp) / "audit.db"),
            sample=args.sample,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
        )
        cpu0, t0 = time.process_time(), time.perf_counter()
        summary = audit(str(data), cfg, nla=nla, progress=False)
        audit_s, audit_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        import sqlite3

        with sqlite3.connect(cfg.out) as c:
            stored = c.execute(
                "SELECT d.doc_id, p.idx, e.raw FROM explanations e JOIN positions p USING (pos_id) "
                "JOIN documents d USING (doc_key)"
            ).fetchall()
    assert summary["positions"]["stored"] == n, (summary, n)
    print(
        f"nla audit (batch {args.batch_size}): {n / audit_s:.3f} explanations/s ({audit_s:.1f} s wall, "
        f"{audit_cpu:.1f} s CPU; load {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    if args.skip_baseline:
        print("greedy answers: " + json.dumps([raw for _, _, raw in sorted(stored)]))
        return
    base_raw = {(d.doc_id, r.position): r.raw for d, recs in zip(docs, single, strict=True) for r in recs}
    same = sum(base_raw.get((doc, idx)) == raw for doc, idx, raw in stored)

    load = os.getloadavg()
    print(f"shipped NLA, greedy, {len(docs)} sample chats x {args.sample} assistant tokens = {n} positions")
    print(f"torch threads {args.threads}; machine load average {load[0]:.1f} on {os.cpu_count()} CPUs (shared)")
    print(f"NLA.explain one text at a time: {n / base_s:.3f} explanations/s ({base_s:.1f} s)")
    print(f"speed-up: {base_s / audit_s:.2f}x")
    print(
        f"cost per 1k positions: audit {1000 * audit_s / n / 60:.1f} min wall, {1000 * audit_cpu / n / 60:.1f} "
        f"CPU-min; one text at a time {1000 * base_s / n / 60:.1f} min wall, {1000 * base_cpu / n / 60:.1f} CPU-min"
    )
    print(f"audit explanations equal to the one-at-a-time ones: {same}/{n}")


if __name__ == "__main__":
    main()
