"""Search the explanations of an audit DB (SQLite FTS5, ranked by bm25) and read positions back.

The query is FTS5 syntax: words (stemmed: ``deceive`` finds ``deceiving``), ``"exact phrase"``,
``secret OR password``, ``evaluat*``, ``NOT``, ``NEAR(a b, 5)``. Filters: ``min_margin`` keeps only
explanations whose round-trip cosine beats the empty-explanation control by at least that much (an
explanation that does not beat it carries no information about the activation), ``role``, ``doc`` (a
document id) and ``run`` (default: the latest).

>>> for hit in search("audit.db", "secret OR password", min_margin=0.02):   # doctest: +SKIP
...     print(hit["doc_id"], hit["token"], hit["explanation"])
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from nla.audit.store import Store
from nla.common.errors import NLAError

AFTER_CHARS = 60  # characters of context shown after a token

_SELECT = (
    "SELECT p.pos_id, p.run_id, d.doc_id, p.idx, p.token, p.role, p.turn, p.start, p.end, p.context, "
    "e.explanation, e.raw, e.cosine, e.mse_nrm, e.fve, e.control_cosine, e.margin, e.cjk, e.lookup_fve, e.worth, "
    "rd.rendered "
    "FROM explanations e JOIN positions p USING (pos_id) JOIN documents d USING (doc_key) "
    "JOIN run_docs rd ON rd.run_id = p.run_id AND rd.doc_key = p.doc_key "
)


def hit_from_row(row: sqlite3.Row, rank: float | None = None) -> dict[str, Any]:
    """A JSON-ready record of one explained position (context before and after the token)."""
    out = {k: row[k] for k in row.keys() if k not in ("rendered", "context")}
    out["before"] = row["context"][: len(row["context"]) - len(row["token"])]
    out["after"] = row["rendered"][row["end"] : row["end"] + AFTER_CHARS]
    if rank is not None:
        out["rank"] = rank
    return out


def _filters(
    store: Store, run: int | None, min_margin: float | None, role: str | None, doc: str | None, worth: bool = False
) -> tuple:
    run_id = store.run(run)["run_id"]
    where, params = ["p.run_id = ?"], [run_id]
    if worth:
        where.append("e.worth = 1")
    if min_margin is not None:
        where.append("e.margin >= ?")
        params.append(float(min_margin))
    if role:
        where.append("p.role = ?")
        params.append(role)
    if doc:
        where.append("d.doc_id = ?")
        params.append(doc)
    return where, params


def search_store(
    store: Store,
    query: str,
    *,
    run: int | None = None,
    min_margin: float | None = None,
    role: str | None = None,
    doc: str | None = None,
    limit: int = 20,
    worth: bool = False,
) -> list[dict[str, Any]]:
    """Ranked hits for an FTS5 ``query`` (see the module docstring); a bad query is one clear error.
    ``worth``: only explanations with the verdict 'worth reading' (:mod:`nla.explain.trust`)."""
    if not query or not query.strip():
        raise NLAError("the search query is empty")
    if limit < 1:
        raise NLAError("--limit must be >= 1")
    where, params = _filters(store, run, min_margin, role, doc, worth)
    sql = (
        _SELECT.replace("SELECT ", "SELECT bm25(explanations_fts) AS rank, ", 1)
        + "JOIN explanations_fts f ON f.rowid = e.pos_id "
        + "WHERE explanations_fts MATCH ? AND "
        + " AND ".join(where)
        + " ORDER BY rank LIMIT ?"
    )
    try:
        rows = store.db.execute(sql, (query, *params, int(limit))).fetchall()
    except sqlite3.OperationalError as e:
        msg = str(e)
        if "fts5" in msg or "syntax" in msg or "no such column" in msg or "unterminated" in msg:
            raise NLAError(
                f'bad search query {query!r} ({msg}); FTS5 syntax: words, "a phrase", a OR b, prefix*, NOT'
            ) from e
        raise NLAError(f"search failed: {msg}") from e
    return [hit_from_row(r, rank=float(r["rank"])) for r in rows]


def search(db: str | Path, query: str, **filters: Any) -> list[dict[str, Any]]:
    """:func:`search_store` on the DB at ``db``."""
    with Store(db) as store:
        return search_store(store, query, **filters)


def position(store: Store, pos_id: int) -> dict[str, Any]:
    """Everything stored about one explained position (all samples included)."""
    rows = store.query(_SELECT.replace("e.cjk,", "e.cjk, e.samples,") + "WHERE p.pos_id = ?", (int(pos_id),))
    if not rows:
        raise NLAError(f"no explained position {pos_id}")
    out = hit_from_row(rows[0])
    out["samples"] = json.loads(rows[0]["samples"])
    return out


def document_view(store: Store, doc_id: str, run: int | None = None) -> dict[str, Any]:
    """One document as a run saw it: every token, and the explanation scores of the explained ones."""
    run_id = store.run(run)["run_id"]
    rows = store.query(
        "SELECT d.doc_key, d.doc_id, d.kind, d.source, rd.tokens FROM documents d "
        "JOIN run_docs rd USING (doc_key) WHERE d.doc_id = ? AND rd.run_id = ?",
        (doc_id, run_id),
    )
    if not rows:
        raise NLAError(f"run {run_id} has no document {doc_id!r}")
    r = rows[0]
    explained = {
        int(p["idx"]): dict(p)
        for p in store.query(
            "SELECT p.idx, p.pos_id, p.role, p.turn, e.cosine, e.control_cosine, e.margin, e.fve, e.lookup_fve, "
            "e.worth, e.explanation "
            "FROM positions p LEFT JOIN explanations e USING (pos_id) WHERE p.run_id = ? AND p.doc_key = ?",
            (run_id, r["doc_key"]),
        )
    }
    tokens = [{"i": i, "text": t, **explained.get(i, {})} for i, t in enumerate(json.loads(r["tokens"]))]
    return {"run": run_id, "doc_id": r["doc_id"], "kind": r["kind"], "source": r["source"], "tokens": tokens}


def documents(store: Store, run: int | None = None, *, limit: int = 1000, offset: int = 0) -> list[dict[str, Any]]:
    """The documents of a run with their explained-position counts, mean margin and flag counts."""
    run_id = store.run(run)["run_id"]
    rows = store.query(
        "SELECT d.doc_id, d.kind, rd.n_positions, COUNT(e.pos_id) AS explained, AVG(e.margin) AS mean_margin, "
        "SUM(e.worth) AS worth_reading, "
        "(SELECT COUNT(*) FROM flags f JOIN positions q USING (pos_id) "
        " WHERE f.run_id = rd.run_id AND q.doc_key = d.doc_key) AS flags "
        "FROM run_docs rd JOIN documents d USING (doc_key) "
        "LEFT JOIN positions p ON p.run_id = rd.run_id AND p.doc_key = rd.doc_key "
        "LEFT JOIN explanations e USING (pos_id) "
        "WHERE rd.run_id = ? GROUP BY d.doc_key ORDER BY d.doc_key LIMIT ? OFFSET ?",
        (run_id, int(limit), int(offset)),
    )
    return [dict(r) for r in rows]


__all__ = ["document_view", "documents", "hit_from_row", "position", "search", "search_store"]
