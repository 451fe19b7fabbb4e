"""The audit store: one SQLite file (WAL mode) holding documents, runs, positions and explanations.

Tables (``SCHEMA``): ``documents`` (one row per document id, its content and a content hash), ``runs``
(the NLA's identity and fingerprint, the job's config), ``run_docs`` (a document as one run tokenised
it: the rendered text and its tokens), ``positions`` (the tokens a run explains: token, character
offsets, role, turn, context tail and the work batch it belongs to), ``explanations`` (per position:
the explanation, the AV's raw answer, cosine / mse_nrm / fve of the round trip, the empty-explanation
control, the token lookup's fve and the verdict ``worth`` (1 = worth reading, nla.explain.trust), every
sample, the raw activation as float32 bytes), ``explanations_fts`` (an FTS5 index of the
explanations, rowid = position id), ``skips`` (what a run left out and why: a malformed line, a document
or some of its positions; ``positions`` counts the positions left out, 0 for a whole line) and ``flags``
(what ``nla audit flags`` found).

Writers hold an exclusive lock file (``<db>.lock``, released by the OS even on SIGKILL and removed on a
clean exit; a SIGKILLed job leaves it, harmless, for the next writer to take), so one job
writes at a time while readers (search, ``nla serve``) keep reading; each work batch is written in one
transaction, so a killed job leaves whole batches only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nla.common.errors import NLAError

SCHEMA_VERSION = "1"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY,
    created TEXT NOT NULL,
    nla_id TEXT NOT NULL,
    nla TEXT NOT NULL,
    config TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS documents (
    doc_key INTEGER PRIMARY KEY,
    doc_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    content TEXT NOT NULL,
    content_hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS run_docs (
    run_id INTEGER NOT NULL REFERENCES runs,
    doc_key INTEGER NOT NULL REFERENCES documents,
    rendered TEXT NOT NULL,
    tokens TEXT NOT NULL,
    n_positions INTEGER NOT NULL,
    PRIMARY KEY (run_id, doc_key)
);
CREATE TABLE IF NOT EXISTS positions (
    pos_id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs,
    doc_key INTEGER NOT NULL REFERENCES documents,
    idx INTEGER NOT NULL,
    token TEXT NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    role TEXT NOT NULL,
    turn INTEGER,
    context TEXT NOT NULL,
    batch INTEGER NOT NULL,
    UNIQUE (run_id, doc_key, idx)
);
CREATE INDEX IF NOT EXISTS positions_batch ON positions (run_id, batch);
CREATE TABLE IF NOT EXISTS explanations (
    pos_id INTEGER PRIMARY KEY REFERENCES positions,
    explanation TEXT,
    raw TEXT NOT NULL,
    cosine REAL,
    mse_nrm REAL,
    fve REAL,
    control_cosine REAL,
    margin REAL,
    cjk INTEGER NOT NULL,
    lookup_fve REAL,
    worth INTEGER,
    samples TEXT NOT NULL,
    activation BLOB NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS explanations_fts USING fts5(explanation, tokenize = 'porter unicode61');
CREATE TABLE IF NOT EXISTS flags (
    run_id INTEGER NOT NULL,
    detector TEXT NOT NULL,
    pos_id INTEGER NOT NULL REFERENCES positions,
    score REAL,
    agreement TEXT,
    PRIMARY KEY (run_id, detector, pos_id)
);
CREATE TABLE IF NOT EXISTS skips (
    run_id INTEGER NOT NULL REFERENCES runs,
    location TEXT NOT NULL,
    doc_id TEXT,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    positions INTEGER NOT NULL,
    UNIQUE (run_id, location, kind, reason)
);
CREATE TABLE IF NOT EXISTS flag_rules (
    run_id INTEGER PRIMARY KEY,
    rules TEXT NOT NULL,
    detectors TEXT NOT NULL
);
"""

EXPLANATION_COLUMNS = (
    "pos_id",
    "explanation",
    "raw",
    "cosine",
    "mse_nrm",
    "fve",
    "control_cosine",
    "margin",
    "cjk",
    "lookup_fve",
    "worth",
    "samples",
    "activation",
)


def _locked(e: sqlite3.OperationalError) -> bool:
    return "locked" in str(e) or "busy" in str(e)


class Store:
    """A connection to an audit DB. ``Store(path)`` opens (or, with ``create``, makes) it; use as a
    context manager to close it. ``timeout``: seconds to wait for another process's write lock."""

    def __init__(self, path: str | Path, *, create: bool = False, timeout: float = 10.0) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise NLAError(f"no audit database at {self.path} (make one with `nla audit DATA --out {self.path}`)")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file: Any = None
        try:
            self.db = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            if create:
                self.db.executescript(SCHEMA)
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            version = self.db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            self._add_columns()
        except sqlite3.OperationalError as e:
            raise self._error(e) from e
        except sqlite3.DatabaseError as e:
            raise NLAError(f"{self.path} is not an nla audit database: {e}") from e
        if version is None or version[0] != SCHEMA_VERSION:
            raise NLAError(f"{self.path} has audit schema {version and version[0]!r}; this nla reads {SCHEMA_VERSION}")

    def _add_columns(self) -> None:
        """Columns added to schema 1 later (the verdict's): a DB made before them gets them, empty."""
        have = {r[1] for r in self.db.execute("PRAGMA table_info(explanations)")}
        if not have:
            return
        for name, kind in (("lookup_fve", "REAL"), ("worth", "INTEGER")):
            if name not in have:
                self.db.execute(f"ALTER TABLE explanations ADD COLUMN {name} {kind}")

    def _error(self, e: sqlite3.OperationalError) -> NLAError:
        if _locked(e):
            return NLAError(f"the audit database {self.path} is locked by another process; retry when it is done")
        if "no such table" in str(e):
            return NLAError(f"{self.path} is not an nla audit database ({e})")
        return NLAError(f"audit database {self.path}: {e}")

    def close(self) -> None:
        self.db.close()
        if self._lock_file is not None:  # remove the lock file while still holding it, then release it
            with contextlib.suppress(OSError):
                self.lock_path.unlink()
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ writing
    def lock_writer(self) -> None:
        """Take the writer lock (``<db>.lock``); a second writer gets one clear error."""
        lock = self.lock_path
        f = open(lock, "a+")  # noqa: SIM115 (held until close)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not lock.exists() or os.stat(lock).st_ino != os.fstat(f.fileno()).st_ino:
                raise OSError("the lock file was removed by the writer that just finished")
        except OSError as e:
            f.close()
            raise NLAError(f"another `nla audit` is writing to {self.path}; wait for it to finish") from e
        self._lock_file = f

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``): committed whole or not at all."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            raise self._error(e) from e
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        try:
            self.db.execute("COMMIT")
        except sqlite3.OperationalError as e:
            self.db.execute("ROLLBACK")
            raise self._error(e) from e

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            return self.db.execute(sql, tuple(params)).fetchall()
        except sqlite3.OperationalError as e:
            raise self._error(e) from e

    def add_run(self, created: str, nla_id: str, nla: dict[str, Any], config: dict[str, Any]) -> int:
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO runs (created, nla_id, nla, config) VALUES (?, ?, ?, ?)",
                (created, nla_id, json.dumps(nla, sort_keys=True), json.dumps(config, sort_keys=True)),
            )
            return int(cur.lastrowid)

    def write_explanations(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert one batch of explanation rows and their FTS entries in one transaction."""
        cols = ", ".join(EXPLANATION_COLUMNS)
        marks = ", ".join("?" for _ in EXPLANATION_COLUMNS)
        with self.transaction() as db:
            db.executemany(
                f"INSERT INTO explanations ({cols}) VALUES ({marks})",
                [tuple(r[c] for c in EXPLANATION_COLUMNS) for r in rows],
            )
            db.executemany(
                "INSERT INTO explanations_fts (rowid, explanation) VALUES (?, ?)",
                [(r["pos_id"], r["search_text"]) for r in rows],
            )

    def add_skips(self, db: sqlite3.Connection, run_id: int, skips: Sequence[dict[str, Any]]) -> None:
        """Record skips (``location, doc_id, kind, reason, positions``) inside an open transaction ``db``;
        the same skip recorded again by a rerun is stored once."""
        rows = [
            (run_id, k["location"], k.get("doc_id"), k["kind"], k["reason"], int(k.get("positions", 0))) for k in skips
        ]
        db.executemany(
            "INSERT OR IGNORE INTO skips (run_id, location, doc_id, kind, reason, positions) VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )

    # ------------------------------------------------------------------ reading
    def skips(self, run_id: int) -> list[dict[str, Any]]:
        """What run ``run_id`` skipped, in the order it was recorded."""
        rows = self.query(
            "SELECT location, doc_id, kind, reason, positions FROM skips WHERE run_id = ? ORDER BY rowid", (run_id,)
        )
        return [dict(r) for r in rows]

    def runs(self) -> list[dict[str, Any]]:
        rows = self.query("SELECT * FROM runs ORDER BY run_id")
        return [{**dict(r), "nla": json.loads(r["nla"]), "config": json.loads(r["config"])} for r in rows]

    def run(self, run_id: int | None = None) -> dict[str, Any]:
        """A run by id; the latest when ``run_id`` is None. One clear error when there is none."""
        runs = self.runs()
        if not runs:
            raise NLAError(f"{self.path} holds no audit run yet")
        if run_id is None:
            return runs[-1]
        for r in runs:
            if r["run_id"] == run_id:
                return r
        raise NLAError(f"{self.path} has no run {run_id}; runs: {', '.join(str(r['run_id']) for r in runs)}")

    def activations(self, pos_ids: Sequence[int]) -> np.ndarray:  # -> (N, d) float32
        out = []
        for pid in pos_ids:
            row = self.query("SELECT activation FROM explanations WHERE pos_id = ?", (int(pid),))
            if not row:
                raise NLAError(f"position {pid} has no stored activation")
            out.append(np.frombuffer(row[0][0], dtype="<f4"))
        return np.stack(out) if out else np.zeros((0, 0), dtype=np.float32)


def pack_vector(v: np.ndarray) -> bytes:
    """A float32 little-endian blob of a 1-D vector."""
    return np.ascontiguousarray(v, dtype="<f4").tobytes()


__all__ = ["SCHEMA", "Store", "pack_vector"]
