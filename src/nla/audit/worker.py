"""What every audit engine runs: load the NLA a run describes once, then explain one planned work batch
into store rows. The local engine and the Ray actors call the same two functions, so a batch gives the
same rows wherever it runs."""

from __future__ import annotations

import json
from typing import Any

from nla.audit.store import pack_vector
from nla.common.errors import NLAError
from nla.core.text import DEFAULT_MIN_SUPPORT, text_for_ar
from nla.explain.api import NLA


def load_nla(desc: dict[str, Any], device: str = "cpu", dtype: str = "float32") -> NLA:
    """The NLA a run describes (what every engine worker loads once)."""
    return NLA.from_pretrained(
        desc["av"], desc["ar"], target=desc["target"], device=device, dtype=dtype, baseline=desc["baseline"]
    )


def batch_seed(seed: int, batch: int) -> int:
    return (int(seed) * 1_000_003 + int(batch)) % (2**31 - 1)


def explain_batch(nla: NLA, work: dict[str, Any], opts: dict[str, Any]) -> list[dict[str, Any]]:
    """Explanation rows (``nla.audit.store.EXPLANATION_COLUMNS`` + ``search_text``) of one work batch.

    ``opts``: max_new_tokens, best_of, temperature, seed, min_support, max_tokens (keep the last N tokens).
    Every engine calls this, so rows are the same wherever a batch runs."""
    docs = work["docs"]
    n = sum(len(d["positions"]) for d in docs)
    records, acts, _ = nla.explain_texts(
        [d["content"] for d in docs],
        [d["positions"] for d in docs],
        max_new_tokens=int(opts["max_new_tokens"]),
        best_of=int(opts["best_of"]),
        temperature=opts.get("temperature"),
        min_support=int(opts.get("min_support", DEFAULT_MIN_SUPPORT)),
        max_tokens=opts.get("max_tokens"),
        batch_size=max(1, n),
        seed=batch_seed(opts["seed"], work["batch"]),
        return_activations=True,
    )
    rows = []
    for d, recs, vecs in zip(docs, records, acts, strict=True):
        if [r.token for r in recs] != d["tokens"]:
            raise NLAError("the NLA's tokenizer splits a document differently from the plan in the database")
        for pid, r, v in zip(d["pos_ids"], recs, vecs, strict=True):
            margin = None if r.cosine is None or r.control_cosine is None else r.cosine - r.control_cosine
            samples = [
                {"raw": s.raw, "explanation": s.explanation, "cosine": s.cosine, "mse_nrm": s.mse_nrm, "fve": s.fve}
                for s in r.samples
            ]
            rows.append(
                dict(
                    pos_id=pid,
                    explanation=r.explanation,
                    raw=r.raw,
                    cosine=r.cosine,
                    mse_nrm=r.mse_nrm,
                    fve=r.fve,
                    control_cosine=r.control_cosine,
                    margin=margin,
                    cjk=int(r.cjk),
                    lookup_fve=r.lookup_fve,
                    worth=None if r.worth_reading is None else int(r.worth_reading),
                    samples=json.dumps(samples, ensure_ascii=False),
                    activation=pack_vector(v.numpy()),
                    search_text=r.explanation if r.explanation is not None else text_for_ar(r.raw),
                )
            )
    return rows
