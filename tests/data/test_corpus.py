from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import nla.data.corpus_default as cd
import nla.data.prose as prose
from nla.cli import main
from nla.common.errors import NLAError
from nla.data.corpus import corpus_stats, load_corpus
from nla.data.documents import Document, write_jsonl
from nla.faithfulness.concepts import load_concepts

from helpers import tiny_target


# ----------------------------------------------------------------------------- user corpora
def test_jsonl_ids_sources_and_chat(tmp_path) -> None:
    p = tmp_path / "d.jsonl"
    rows = [
        {"id": "a", "text": "first document"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello", "x": 1}]},
        {"doc_id": 7, "text": "third", "source": "mine", "meta": {"k": 1}},
    ]
    p.write_text(json.dumps(rows[0]) + "\n\n" + "\n".join(json.dumps(r) for r in rows[1:]) + "\n")
    docs = load_corpus(str(p))
    assert [d.doc_id for d in docs] == ["a", "d.jsonl:3", "7"]  # line numbers count blank lines
    assert docs[1].kind == "chat" and docs[1].messages[1] == {"role": "assistant", "content": "hello"}
    assert docs[0].source == "file:d.jsonl" and docs[2].source == "mine" and docs[2].meta == {"k": 1}
    assert [d.doc_id for d in load_corpus(str(p), limit=2)] == ["a", "d.jsonl:3"]
    assert load_corpus(str(p)) == docs


def test_text_file_is_split_at_blank_lines(tmp_path) -> None:
    p = tmp_path / "notes.txt"
    p.write_text("Para one\nstill one.\n\n  \nPara two.\r\n\r\nPara three.\n")
    docs = load_corpus(str(p))
    assert [(d.doc_id, d.text) for d in docs] == [
        ("notes.txt:1", "Para one\nstill one."),
        ("notes.txt:2", "Para two."),
        ("notes.txt:3", "Para three."),
    ]


def test_folder_is_one_document_per_file(tmp_path) -> None:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "b.txt").write_text("bee")
    (root / "sub" / "a.md").write_text("# A\n\nalpha")
    (root / "empty.txt").write_text("  \n")
    (root / "data.bin").write_bytes(b"\xff\xfe")
    (root / ".git" / "x.txt").write_text("hidden")
    docs = load_corpus(str(root))
    assert [(d.doc_id, d.text) for d in docs] == [("b.txt", "bee"), ("sub/a.md", "# A\n\nalpha")]


def test_parquet_text_and_messages(tmp_path) -> None:
    p = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["one", "two"]}), p)
    assert [d.doc_id for d in load_corpus(str(p))] == ["t.parquet:0", "t.parquet:1"]
    q = tmp_path / "m.parquet"
    msgs = [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]]
    pq.write_table(pa.table({"id": ["c1"], "messages": msgs}), q)
    (doc,) = load_corpus(str(q))
    assert doc.doc_id == "c1" and doc.messages == tuple(msgs[0])


def test_write_jsonl_round_trip(tmp_path) -> None:
    docs = [
        Document("x", text="héllo\nworld", source="s", meta={"a": [1, 2]}),
        Document("y", messages=({"role": "user", "content": "q"},), source="s"),
    ]
    back = load_corpus(str(write_jsonl(docs, tmp_path / "c.jsonl")))
    assert back == docs and back[0].meta == {"a": [1, 2]}


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("bad.jsonl", '{"text": "ok"}\n{"text": oops}\n', "line 2: not valid JSON"),
        ("bad.jsonl", '{"text": "ok"}\n{"title": "no text"}\n', "line 2: needs a non-empty 'text'"),
        ("bad.jsonl", '{"messages": [{"role": "user"}]}\n', "line 1: every message needs"),
        ("bad.jsonl", '{"text": "   "}\n', "line 1: empty text"),
        ("dup.jsonl", '{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', "duplicate document id 'a'"),
        ("empty.jsonl", "\n\n", "holds no documents"),
        ("empty.txt", "  \n\n ", "holds no documents"),
        ("latin1.txt", b"caf\xe9 au lait", "not UTF-8 text"),
        ("t.parquet", None, "needs a 'text' or 'messages' column"),
    ],
)
def test_bad_inputs_give_one_clear_error(tmp_path, name, content, match) -> None:
    p = tmp_path / name
    if content is None:
        pq.write_table(pa.table({"body": ["x"]}), p)
    elif isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)
    with pytest.raises(NLAError, match=match):
        load_corpus(str(p))


def test_missing_path_limit_and_optional_datasets(tmp_path, monkeypatch) -> None:
    with pytest.raises(NLAError, match="corpus not found"):
        load_corpus(str(tmp_path / "nope.jsonl"))
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(NLAError, match="limit must be positive"):
        load_corpus(str(tmp_path / "a.txt"), limit=0)
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    with pytest.raises(NLAError, match="optional 'datasets' package"):
        load_corpus("hf:HuggingFaceFW/fineweb@train")


def test_stats_cli(tmp_path, capsys) -> None:
    p = tmp_path / "c.jsonl"
    write_jsonl(
        [
            Document("a", text="one two three four", source="web"),
            Document("b", messages=({"role": "user", "content": "hi there"}, {"role": "assistant", "content": "yo"})),
        ],
        p,
    )
    stats = corpus_stats(load_corpus(str(p)))
    assert stats["by_kind"] == {"chat": 1, "text": 1} and stats["words"]["mean"] == 3.5
    assert main(["corpus", "stats", str(p)]) == 0
    out = capsys.readouterr().out
    assert "2 documents" in out and "--- b (chat" in out and "[assistant] yo" in out
    assert main(["corpus", "stats", str(tmp_path / "missing.jsonl")]) == 2
    assert capsys.readouterr().err.startswith("nla: error: corpus not found")


# ----------------------------------------------------------------------------- default corpus pieces
def test_chat_prompts_are_distinct_varied_and_stable() -> None:
    prompts = cd.chat_prompts(600)
    assert len({p for _, p in prompts}) == 600
    assert len({c for c, _ in prompts[:100]}) >= 15  # round-robin across categories
    assert cd.chat_prompts(50) == prompts[:50]
    with pytest.raises(NLAError, match="distinct prompts"):
        cd.chat_prompts(10**6)


def test_clean_paragraphs_and_chunks() -> None:
    raw = (
        "Title\n=====\n\nSee the [docs](https://x.org) and ![badge](b.svg) for **more** details about this "
        "lovely library.\n\n```python\nx = compute(1, 2)\n```\n\n    def f(x): return {x: [1, 2]}\n\n"
        ">>> f(1)\n\nUse :func:`os.path.join` to build a path from several parts safely."
    )
    assert prose.clean_paragraphs(raw) == [
        "See the docs and for more details about this lovely library.",
        "Use os.path.join to build a path from several parts safely.",
    ]
    paras = [" ".join(["word"] * n) + "." for n in (30, 60, 90)] + [" ".join(["a b c d e f g h i j."] * 50)]
    chunks = prose.chunk_passages(paras)
    sizes = [len(c.split()) for c in chunks]
    assert chunks and all(100 <= s <= 400 for s in sizes), sizes
    assert sum(sizes) == 680  # the 500-word paragraph was split at sentence ends, not dropped


def test_spread_interleaves_evenly() -> None:
    assert cd.spread([1, 2, 3], ["a", "b", "c"]) == [1, "a", 2, "b", 3, "c"]
    assert cd.spread([1, 2, 3, 4], ["a"]) == [1, 2, "a", 3, 4]


# ----------------------------------------------------------------------------- default corpus build
def _babbler():
    """A tiny random target whose untied LM head makes greedy answers vary with the prompt."""
    t = tiny_target("llama")
    g = torch.Generator().manual_seed(0)
    t.model.config.tie_word_embeddings = False
    t.model.lm_head.weight = torch.nn.Parameter(torch.randn(t.model.lm_head.weight.shape, generator=g))
    return t


TINY = dict(
    n_chat=7, n_web=7, max_new_tokens=5, batch_size=2, chunk_size=3, multi_turn=0.5, generated_web=0.3, progress=False
)


def test_tiny_default_corpus_is_deterministic_and_balanced(tmp_path) -> None:
    a = cd.build_default_corpus(target=_babbler(), out=tmp_path / "a.jsonl", **TINY)
    b = cd.build_default_corpus(target=_babbler(), out=tmp_path / "b.jsonl", **TINY)
    assert a.read_text() == b.read_text()
    assert not (tmp_path / "a.jsonl.parts").exists()
    docs = load_corpus(str(a))
    assert [d.kind for d in docs[:4]] == ["chat", "text", "chat", "text"]  # interleaved: prefixes are mixed
    chats = [d for d in docs if d.kind == "chat"]
    assert len(chats) == 7 and len(docs) == 14
    assert [d.doc_id for d in chats] == [f"chat-{i:05d}" for i in range(7)]
    assert all(d.messages[0]["role"] == "user" and d.messages[-1]["role"] == "assistant" for d in chats)
    assert 1 <= sum(len(d.messages) == 4 for d in chats) <= 6  # some, not all, got a follow-up
    answers = [d.messages[-1]["content"] for d in chats]
    assert len(set(answers)) > 3  # answers come from the model and vary with the prompt
    web = {d.source for d in docs if d.kind == "text"}
    assert "default/web/generated" in web and len(web) >= 3
    assert json.loads((tmp_path / "a.jsonl.info.json").read_text())["documents"] == 14


def test_own_prompt_templates_make_a_chat_only_corpus(tmp_path) -> None:
    prompts = tmp_path / "mine.yaml"
    prompts.write_text(
        "prompts:\n  birds: ['Why do geese fly in a V?']\n"
        "templates:\n  - category: birds\n    pattern: 'Where does the {bird} spend the {season}?'\n"
        "    slots: {bird: [swift, crane, stork], season: [winter, summer]}\n"
        "  - category: tides\n    pattern: 'Why are tides high at {place}?'\n    slots: {place: [noon, night]}\n"
    )
    chats_only = {**TINY, "n_web": 0}
    out = cd.build_default_corpus(target=_babbler(), out=tmp_path / "c.jsonl", **chats_only, prompts=str(prompts))
    docs = load_corpus(str(out))
    assert [d.doc_id for d in docs] == [f"chat-mine-{i:05d}" for i in range(7)] and all(d.kind == "chat" for d in docs)
    assert docs[0].messages[0]["content"] == "Why do geese fly in a V?"  # hand-written prompts come first
    assert {d.meta["category"] for d in docs} == {"birds", "tides"}
    with pytest.raises(NLAError, match="only 9 distinct prompts"):
        cd.build_default_corpus(target=_babbler(), out=tmp_path / "d.jsonl", **{**TINY, "n_chat": 10, "n_web": 0},
                                prompts=str(prompts))  # fmt: skip
    with pytest.raises(NLAError, match="prompt file not found"):
        cd.build_default_corpus(target=_babbler(), out=tmp_path / "e.jsonl", **TINY, prompts=str(tmp_path / "no.yaml"))
    (tmp_path / "bad.yaml").write_text("templates: [unclosed\n")
    with pytest.raises(NLAError, match="bad.yaml"):
        cd.build_default_corpus(target=_babbler(), out=tmp_path / "f.jsonl", **TINY, prompts=str(tmp_path / "bad.yaml"))


def test_build_resumes_after_interrupt_without_duplicates(tmp_path, monkeypatch) -> None:
    ref = cd.build_default_corpus(target=_babbler(), out=tmp_path / "ref.jsonl", **TINY)
    real = cd.generate_answers
    calls: list[int] = []

    def flaky(*args, **kw):
        calls.append(1)
        if len(calls) == 3:  # dies inside the second chat chunk
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(cd, "generate_answers", flaky)
    out = tmp_path / "c.jsonl"
    with pytest.raises(KeyboardInterrupt):
        cd.build_default_corpus(target=_babbler(), out=out, **TINY)
    assert not out.exists() and (tmp_path / "c.jsonl.parts" / "chat-00000.jsonl").exists()
    monkeypatch.setattr(cd, "generate_answers", real)
    resumed_calls: list[int] = []
    monkeypatch.setattr(cd, "generate_answers", lambda *a, **k: resumed_calls.append(1) or real(*a, **k))
    cd.build_default_corpus(target=_babbler(), out=out, **TINY)
    assert out.read_text() == ref.read_text()
    ids = [d.doc_id for d in load_corpus(str(out))]
    assert len(ids) == len(set(ids)) == 14
    full = len(calls) - 1 + len(resumed_calls)
    assert len(resumed_calls) < full  # the finished chunk was not generated again

    def boom(*a, **k):
        raise AssertionError("a finished corpus must be reused, not rebuilt")

    monkeypatch.setattr(cd, "generate_answers", boom)
    assert cd.build_default_corpus(target=_babbler(), out=out, **TINY) == out


def test_prefix_generates_only_the_chunks_it_needs(tmp_path, monkeypatch) -> None:
    from functools import partial

    settings = {k: v for k, v in TINY.items() if k != "progress"}
    cfg = cd.DefaultCorpusConfig(out=str(tmp_path / "p.jsonl"), **settings)
    _, head = cd._produce(cfg, _babbler(), 5, False)
    assert len(head) == 5 and not (tmp_path / "p.jsonl").exists()
    chunks = sorted(p.name for p in (tmp_path / "p.jsonl.parts").glob("*-*.jsonl"))
    assert chunks == ["chat-00000.jsonl", "gen-00000.jsonl"]  # chats 0..2 only; the rest waits for the full build
    full = load_corpus(str(cd.build_default_corpus(target=_babbler(), out=tmp_path / "p.jsonl", **TINY)))
    assert head == full[:5]
    # load_corpus("default", limit=...) goes through the same path (defaults patched to a tiny model)
    model_dir = tmp_path / "tiny"
    _babbler().model.save_pretrained(model_dir)
    tiny_target("llama").tokenizer.save_pretrained(model_dir)
    monkeypatch.setattr(cd, "DefaultCorpusConfig", partial(cd.DefaultCorpusConfig, model=str(model_dir), **settings))
    docs = load_corpus("default", limit=3)
    assert [d.kind for d in docs] == ["chat", "text", "chat"] and docs[0].doc_id == "chat-00000"


def test_build_cli_help_and_bad_option(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["corpus", "build", "--help"])
    assert "--max-new-tokens" in capsys.readouterr().out
    assert main(["corpus", "build", "--n-chat", "0"]) == 2


@pytest.mark.slow
def test_real_smollm2_answers_a_tiny_default_corpus(smollm2, tmp_path) -> None:
    out = cd.build_default_corpus(
        target=smollm2,
        out=tmp_path / "c.jsonl",
        n_chat=4,
        n_web=4,
        max_new_tokens=20,
        generated_web=0.0,
        multi_turn=0.0,
        progress=False,
    )
    chats = [d for d in load_corpus(str(out)) if d.kind == "chat"]
    answers = [d.messages[-1]["content"] for d in chats]
    assert len(answers) == 4 and all(answers) and sum(len(a.split()) for a in answers) >= 24
    assert sum(c.isascii() for a in answers for c in a) / sum(len(a) for a in answers) > 0.95


@pytest.mark.parametrize(("name", "n_chat"), [("topics", 900), ("scenes", 380)])
def test_supplementary_prompt_files_hold_enough_prompts_and_no_suite_sentence(name: str, n_chat: int) -> None:
    """The bundled supplementary prompt files give as many distinct chats as the smollm2 preset asks for, and
    none of them is a sentence of the faithfulness concept set, which stays held out."""
    from nla.data.supplementary import prompt_file
    from nla.pipeline import load_pipeline_config

    corpora = load_pipeline_config("smollm2").corpora
    assert n_chat == (corpora.topic_chats if name == "topics" else corpora.scene_chats)
    path = Path(prompt_file(name))
    prompts = [p for _, p in cd.chat_prompts(n_chat, str(path))]
    assert len(set(prompts)) == n_chat
    suite = load_concepts()
    sentences = [*suite.neutral, *suite.neutral_heldout]
    for concept in suite.concepts:
        sentences += [*concept.prompts, *concept.heldout]
    text = path.read_text(encoding="utf-8").lower()
    assert not [s for s in sentences if s.lower().rstrip(".?!") in text]


def test_the_lexicon_prompts_are_many_balanced_and_name_no_suite_concept() -> None:
    """The lexicon corpus's prompts (everyday nouns from WordNet): 1,500 distinct chats spread over WordNet's
    classes, none naming a concept of the faithfulness suite (covered or novel) by the suite's own matcher."""
    from collections import Counter

    from nla.data.supplementary import prompt_file

    chosen = cd.chat_prompts(1500, prompt_file("lexicon"))
    assert len({p for _, p in chosen}) == 1500
    classes = Counter(c for c, _ in chosen)
    assert len(classes) >= 15 and max(classes.values()) <= 1500 / len(classes) * 1.5
    suite = load_concepts()
    assert not [p for _, p in cd.chat_prompts(2000, prompt_file("lexicon")) if suite.named(p)]


def test_supplementary_corpora_chat_answers_locale_and_hash(tmp_path, monkeypatch) -> None:
    """topic_prose is the chats' answers as documents; locale passages come from installed catalogues; the
    corpus hash is order-sensitive and is what extract records."""
    from nla.data import supplementary as sup
    from nla.data.corpus import corpus_sha256

    user, empty = {"role": "user", "content": "Q?"}, {"role": "assistant", "content": ""}
    chats = [Document("c1", messages=(user, {"role": "assistant", "content": " A1. "},
                                      {"role": "user", "content": "More?"}, {"role": "assistant", "content": "A2."})),
             Document("c2", messages=(user, empty))]  # fmt: skip
    prose = sup.chat_answers(chats)
    assert [(d.doc_id, d.text) for d in prose] == [("prose-c1", "A1.\n\nA2.")]
    with pytest.raises(NLAError, match="no chat"):
        sup.chat_answers(chats[1:])
    path = tmp_path / "chats.jsonl"
    write_jsonl(chats, path)
    out = sup.build_supplementary("topic_prose", tmp_path / "prose.jsonl", model="x", chats=path)
    assert [d.text for d in load_corpus(str(out))] == ["A1.\n\nA2."]
    monkeypatch.setattr(sup, "locale_passages", lambda lang, n: [Document(f"{lang}{i}", text="x") for i in range(n)])
    assert len(sup.locale_corpus(["fr", "de"], 2)) == 4
    monkeypatch.setattr(sup, "locale_passages", lambda lang, n: [])
    with pytest.raises(NLAError, match="no installed translations"):
        sup.locale_corpus(["fr"], 2)
    with pytest.raises(NLAError, match="unknown supplementary"):
        sup.build_supplementary("poems", tmp_path / "p.jsonl", model="x")
    docs = load_corpus(str(out)) + [Document("z", text="y")]
    assert corpus_sha256(docs) != corpus_sha256(docs[::-1]) and len(corpus_sha256(docs)) == 64


def test_corpus_build_cli_makes_the_supplementary_corpora(tmp_path, capsys) -> None:
    chats = [Document("c1", messages=({"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}))]
    write_jsonl(chats, tmp_path / "chats.jsonl")
    out = tmp_path / "prose.jsonl"
    assert main(["corpus", "build", "--answers-of", str(tmp_path / "chats.jsonl"), "--out", str(out)]) == 0
    assert [d.text for d in load_corpus(str(out))] == ["A."]
    assert main(["corpus", "build", "--locale", "fr"]) == 2  # where to write it is required
    assert "nla: error: --locale and --answers-of need --out" in capsys.readouterr().err


def test_a_base_model_answers_a_plain_transcript_and_stops_at_the_next_turn(monkeypatch) -> None:
    t = tiny_target("llama")
    t.tokenizer.chat_template = None  # a base model (Gemma 3 270M has no chat template)
    reply = t.tokenizer.encode(" Sure thing.\nUser: and you?", add_special_tokens=False)
    seen: list[str] = []

    def generate(input_ids, attention_mask, **kw):  # the model "goes on" with the next user turn
        seen.append(t.tokenizer.decode(input_ids[0]))
        return torch.cat([input_ids, torch.tensor([reply] * input_ids.shape[0])], dim=1)

    monkeypatch.setattr(t.model, "generate", generate)
    [(text, truncated)] = cd.generate_answers(t, [[{"role": "user", "content": "Hi?"}]], max_new_tokens=20)
    assert seen[0].endswith("User: Hi?\n\nAssistant:")
    assert text == "Sure thing." and not truncated
