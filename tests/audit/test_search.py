from __future__ import annotations

import json
from pathlib import Path

import pytest

from nla.audit.job import audit
from nla.audit.search import document_view, documents, position, search
from nla.audit.store import Store
from nla.cli import main
from nla.common.errors import NLAError

from audit_helpers import WORDS, audit_config, scripted_nla


@pytest.fixture(scope="module")
def db(tiny_nla_dirs: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from audit_helpers import CHATS, write_chats

    root = tmp_path_factory.mktemp("search")
    data = write_chats(root / "chats.jsonl", CHATS)
    out = root / "a.db"
    audit(str(data), audit_config(tiny_nla_dirs, out, positions="all"), nla=scripted_nla(tiny_nla_dirs), progress=False)
    return out


def _word_counts(db: Path) -> dict[str, int]:
    with Store(db) as s:
        texts = [r[0] for r in s.query("SELECT explanation FROM explanations")]
    return {w: sum(w in t for t in texts) for w in WORDS}


def test_search_finds_exactly_the_matching_explanations(db: Path) -> None:
    counts = _word_counts(db)
    word = max(counts, key=counts.get)
    hits = search(db, word, limit=1000)
    assert len(hits) == counts[word] > 0
    assert all(word in h["explanation"] for h in hits)
    h = hits[0]
    assert h["before"] + h["token"] == h["before"] + h["token"] and h["doc_id"].startswith("c")
    assert {"turn", "role", "idx", "cosine", "control_cosine", "margin", "rank"} <= set(h)
    either = search(db, " OR ".join(w for w in WORDS if counts[w]), limit=1000)
    assert len(either) == sum(counts.values())  # every explanation names exactly one word
    assert [x["rank"] for x in either] == sorted(x["rank"] for x in either)  # ranked by bm25


def test_filters(db: Path) -> None:
    q = " OR ".join(WORDS)
    everything = search(db, q, limit=1000)
    assert {h["role"] for h in everything} == {"user", "assistant", "template", "system"}
    assert {h["role"] for h in search(db, q, role="user", limit=1000)} == {"user"}
    assert {h["doc_id"] for h in search(db, q, doc="c1", limit=1000)} == {"c1"}
    cut = sorted(h["margin"] for h in everything)[len(everything) // 2]
    kept = search(db, q, min_margin=cut, limit=1000)
    assert kept and all(h["margin"] >= cut for h in kept) and len(kept) < len(everything)
    assert len(search(db, q, limit=3)) == 3


@pytest.mark.parametrize("query", ['"unterminated', "AND", "secret NOT", "(paris"])
def test_bad_fts_syntax_is_one_clear_error(db: Path, query: str) -> None:
    with pytest.raises(NLAError, match="bad search query"):
        search(db, query)


def test_views(db: Path) -> None:
    with Store(db) as s:
        docs = documents(s)
        assert [d["doc_id"] for d in docs] == ["c0", "c1", "c2", "c3"] and all(d["explained"] for d in docs)
        view = document_view(s, "c1")
        assert all("pos_id" in t for t in view["tokens"])  # positions=all: every token explained
        p = position(s, view["tokens"][3]["pos_id"])
        assert p["token"] == view["tokens"][3]["text"] and len(p["samples"]) == 1
        with pytest.raises(NLAError, match="no document"):
            document_view(s, "nope")
        with pytest.raises(NLAError, match="no run 9"):
            documents(s, 9)
    with pytest.raises(NLAError, match="no audit database"):
        search(db.parent / "missing.db", "x")


def test_cli_search(db: Path, capsys: pytest.CaptureFixture) -> None:
    counts = _word_counts(db)
    word = max(counts, key=counts.get)
    assert main(["audit", "search", word, "--db", str(db), "--json", "--limit", "1000"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == counts[word]
    assert main(["audit", "search", word, "--db", str(db), "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[1] c") and "[2] c" in out and word in out
    assert main(["audit", "search", '"oops', "--db", str(db)]) == 2
    assert "nla: error: bad search query" in capsys.readouterr().err
