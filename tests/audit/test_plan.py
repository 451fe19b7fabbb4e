from __future__ import annotations

import json

import pytest

from nla.audit.plan import SAMPLE_CHATS, read_documents, select_positions, token_rows
from nla.common.errors import NLAError
from nla.data.documents import Document
from nla.explain.inputs import encode_input

from helpers import tiny_tokenizer


def test_malformed_lines_are_counted_and_the_rest_is_read(tmp_path) -> None:
    lines = [
        json.dumps({"id": "a", "text": "The quick brown fox."}),
        "{not json",
        json.dumps({"id": "b", "text": "   "}),  # empty document
        json.dumps({"id": "c", "foo": 1}),  # neither text nor messages
        "",
        json.dumps({"id": "a", "text": "again"}),  # repeated id
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}),
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    docs, report = read_documents(str(path))
    assert [d.doc_id for d in docs] == ["a", "d.jsonl:7"]
    assert report.malformed == 4
    assert any("line 2" in e and "JSON" in e for e in report.examples)
    assert any("line 3" in e and "empty" in e for e in report.examples)
    path.write_text("{bad\n")
    with pytest.raises(NLAError, match="no readable document"):
        read_documents(str(path))


def test_limit_and_other_formats(tmp_path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "one.txt").write_text("Paris is the capital of France.")
    (tmp_path / "dir" / "two.txt").write_text("Berlin is the capital of Germany.")
    docs, report = read_documents(str(tmp_path / "dir"), limit=1)
    assert [d.doc_id for d in docs] == ["one.txt"] and report.malformed == 0


def test_shipped_sample_chats() -> None:
    docs, report = read_documents(SAMPLE_CHATS)
    assert report.malformed == 0 and len(docs) >= 30
    assert all(d.messages is not None and any(m["role"] == "assistant" for m in d.messages) for d in docs)
    assert len({d.meta["topic"] for d in docs}) == len(docs)  # every chat is about something else
    assert sum(len(d.messages) > 3 for d in docs) >= 2 and sum(d.messages[0]["role"] == "system" for d in docs) >= 3


CHAT = Document(
    "c", messages=({"role": "user", "content": "what is two plus two?"}, {"role": "assistant", "content": "four."})
)


def test_positions_auto_every_sample() -> None:
    tok = tiny_tokenizer()
    enc = encode_input(tok, list(CHAT.messages))
    auto = select_positions(CHAT, enc)
    assert "".join(enc.tokens[i] for i in auto) == "four."
    text = Document("t", text="The quick brown fox jumps over the lazy dog.")
    tenc = encode_input(tok, text.text)
    assert select_positions(text, tenc) == list(range(len(tenc.input_ids)))
    assert select_positions(text, tenc, every=3) == list(range(0, len(tenc.input_ids), 3))
    picked = select_positions(text, tenc, sample=4, seed=1)
    assert len(picked) == 4 and picked == sorted(picked)
    assert select_positions(text, tenc, sample=4, seed=1) == picked  # seeded: a rerun picks the same tokens
    assert select_positions(text, tenc, "0,2") == [0, 2]
    no_answer = Document("u", messages=({"role": "user", "content": "hello"},))
    assert select_positions(no_answer, encode_input(tok, list(no_answer.messages))) == []
    with pytest.raises(NLAError):
        select_positions(text, tenc, every=0)


def test_token_rows_offsets_roles_and_context() -> None:
    tok = tiny_tokenizer()
    enc = encode_input(tok, list(CHAT.messages))
    rendered, rows = token_rows(CHAT, enc, list(range(len(enc.input_ids))))
    assert rendered == tok.apply_chat_template(list(CHAT.messages), tokenize=False)
    for r in rows:
        assert rendered[r["start"] : r["end"]] == r["token"] and r["context"].endswith(r["token"])
    roles = {r["role"] for r in rows}
    assert roles == {"user", "assistant", "template"}
    assert {r["turn"] for r in rows if r["role"] == "assistant"} == {1}
