"""An audit never dies on one bad document: each per-document problem is skipped with a stored reason,
and bad options are refused before anything is created."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from nla.audit.job import audit
from nla.audit.store import Store
from nla.common.errors import NLAError
from nla.explain.api import NLA

from audit_helpers import CHATS, audit_config, scripted_nla

LONG_TEXT = " ".join(f"word{i}" for i in range(600))  # > 512 tokens: past the tiny target's context window


@pytest.fixture(scope="module")
def scripted(tiny_nla_dirs: dict) -> NLA:
    return scripted_nla(tiny_nla_dirs)


def mixed_file(path: Path) -> Path:
    """Good chats, an over-long text, a non-UTF-8 line, a wrong-schema line and a chat shorter than index 20."""
    lines = [json.dumps({"id": "good0", "messages": CHATS[0]}).encode()]
    lines.append(json.dumps({"id": "long", "text": LONG_TEXT}).encode())
    lines.append(b'{"id": "latin1", "text": "caf\xe9"}')
    lines.append(json.dumps({"id": "schema", "messages": [{"role": "user", "content": 3}]}).encode())
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    lines.append(json.dumps({"id": "short", "messages": short}).encode())
    lines.append(json.dumps({"id": "good1", "messages": CHATS[1]}).encode())
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_mixed_bad_documents_are_skipped_with_reasons(tiny_nla_dirs: dict, scripted: NLA, tmp_path: Path) -> None:
    data = mixed_file(tmp_path / "mixed.jsonl")
    db = tmp_path / "a.db"
    cfg = audit_config(tiny_nla_dirs, db, positions="assistant,-1,20")
    summary = audit(str(data), cfg, nla=scripted, progress=False)
    with sqlite3.connect(db) as c:
        stored = c.execute(
            "SELECT d.doc_id, p.idx FROM positions p JOIN documents d USING (doc_key) JOIN explanations USING (pos_id)"
        ).fetchall()
    docs = {d for d, _ in stored}
    assert {"good0", "good1", "short"} <= docs and "latin1" not in docs and "schema" not in docs
    assert ("short", 20) not in stored and ("good0", 20) in stored  # index 20 skipped where there is none
    assert len([i for d, i in stored if d == "short"]) > 0  # the rest of the short chat is explained
    with Store(db) as store:
        skips = {(k["location"], k["kind"]): k for k in store.skips(summary["run"])}
    assert skips[("mixed.jsonl line 3", "not_utf8")]["reason"].startswith("not UTF-8 (undecodable byte 0xe9")
    assert ("mixed.jsonl line 4", "schema") in skips
    assert "20 is out of range" in skips[("short", "positions")]["reason"]
    assert "needs a chat input" in skips[("long", "positions")]["reason"]  # 'assistant' on plain text
    long_skip = skips[("long", "too_long")]
    assert long_skip["positions"] > 0 and "--max-tokens 512" in long_skip["reason"]
    assert [i for d, i in stored if d == "long"] == [20]  # its last token (-1) is past the window
    assert summary["skipped"]["by_kind"] == {"not_utf8": 1, "schema": 1, "positions": 2, "too_long": 1}
    assert summary["positions"]["stored"] == len(stored)
    again = audit(str(data), cfg, nla=scripted, progress=False)  # a rerun adds nothing and stores skips once
    assert again["positions"]["explained_now"] == 0 and again["skipped"]["total"] == 5


def test_max_tokens_keeps_the_last_tokens(tiny_nla_dirs: dict, scripted: NLA, tmp_path: Path) -> None:
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"id": "long", "text": LONG_TEXT}) + "\n")
    db = tmp_path / "m.db"
    summary = audit(str(data), audit_config(tiny_nla_dirs, db, max_tokens=20), nla=scripted, progress=False)
    assert summary["positions"]["stored"] == 20 and summary["skipped"]["total"] == 0
    assert not Path(str(db) + ".lock").exists()  # the writer's lock file goes when the job ends
    with sqlite3.connect(db) as c:
        tokens = json.loads(c.execute("SELECT tokens FROM run_docs").fetchone()[0])
    ids = scripted.encode(LONG_TEXT)
    assert tokens == ids.tokens[-20:]
    with pytest.raises(NLAError, match="--max-tokens 9,999 is more than"):
        audit(str(data), audit_config(tiny_nla_dirs, tmp_path / "n.db", max_tokens=9999), nla=scripted)
    assert not (tmp_path / "n.db").exists()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"sample": -1}, "--sample must be >= 1"),
        ({"every": 0}, "--every must be >= 1"),
        ({"positions": "abc"}, "bad --positions item 'abc'"),
        ({"positions": "1:2:3"}, "bad --positions range"),
        ({"temperature": 0.0}, "--temperature must be a positive number"),
        ({"limit": 0}, "--limit must be >= 1"),
        ({"max_tokens": 0}, "--max-tokens must be >= 1"),
    ],
)
def test_bad_options_create_nothing(
    tiny_nla_dirs: dict, chats_file: Path, tmp_path: Path, option: dict, message: str
) -> None:
    db = tmp_path / "bad.db"
    with pytest.raises(NLAError, match=message):
        audit(str(chats_file), audit_config(tiny_nla_dirs, db, **option), progress=False)
    assert not db.exists() and not Path(str(db) + ".lock").exists()


def test_index_past_every_document_is_skipped_not_a_new_run(
    tiny_nla_dirs: dict, scripted: NLA, chats_file: Path, tmp_path: Path
) -> None:
    """--positions 9999 no longer stops the run: every document skips it, with its reason."""
    db = tmp_path / "p.db"
    summary = audit(str(chats_file), audit_config(tiny_nla_dirs, db, positions="9999"), nla=scripted, progress=False)
    assert summary["positions"]["stored"] == 0 and summary["skipped"]["by_kind"] == {"positions": len(CHATS)}


def test_verdict_columns_search_filter_and_old_databases(
    tiny_nla_dirs: dict, scripted: NLA, chats_file: Path, tmp_path: Path
) -> None:
    from nla.audit.search import search

    db = tmp_path / "v.db"
    audit(str(chats_file), audit_config(tiny_nla_dirs, db), nla=scripted, progress=False)
    with sqlite3.connect(db) as c:
        worth = c.execute("SELECT worth, cosine - control_cosine FROM explanations").fetchall()
    assert worth and all(w in (0, 1) for w, _ in worth)
    assert all(w == (m >= 0.09) for w, m in worth)  # no baseline, no lookup: the cosine margin decides
    every = search(db, "text", limit=100)
    kept = search(db, "text", limit=100, worth=True)
    assert {h["pos_id"] for h in kept} == {h["pos_id"] for h in every if h["worth"] == 1}
    old = tmp_path / "old.db"  # a DB made before the verdict columns: they are added, empty
    with sqlite3.connect(old) as c:
        c.executescript(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "INSERT INTO meta VALUES ('schema', '1');"
            "CREATE TABLE explanations (pos_id INTEGER PRIMARY KEY, explanation TEXT, raw TEXT NOT NULL);"
        )
    with Store(old) as store:
        cols = {r[1] for r in store.query("PRAGMA table_info(explanations)")}
    assert {"lookup_fve", "worth"} <= cols
