from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nla.cli import main
from nla.common.errors import NLAError
from nla.data.activations import SPLITS, assert_disjoint, read_dataset_meta, read_split, split_of, vectors
from nla.data.documents import Document
from nla.data.extract import ExtractConfig, extract, work_dir_for
from nla.data.positions import choose_positions, encode_document, plan_batches

from helpers import accelerate_cpu_command, save_tiny_target

WORDS = "the quick brown fox jumps over lazy dog Paris capital France language model add return".split()

# Runs the CLI in a subprocess with the corpus read from a JSONL of Document fields (independent of
# nla.data.corpus.load_corpus); NLA_TEST_CHUNK_SLEEP slows each chunk down so a test can kill it mid-run.
RUNNER = """
import json, os, sys, time
import nla.data.extract as ex
from nla.data.documents import Document

def load(cfg):
    with open(cfg.corpus, encoding="utf-8") as f:
        docs = [Document(**json.loads(line)) for line in f]
    return docs[: cfg.limit_docs] if cfg.limit_docs else docs

write = ex._write_chunk
def slow_write(table, path):
    write(table, path)
    time.sleep(float(os.environ.get("NLA_TEST_CHUNK_SLEEP", "0")))

ex.load_documents, ex._write_chunk = load, slow_write
from nla.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def make_docs(n: int = 30, *, seed: int = 0, chats: int = 4) -> list[Document]:
    rng = random.Random(seed)
    docs = [
        Document(f"doc-{i:03d}", text=" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60)))) for i in range(n)
    ]
    for i in range(chats):
        msgs = (
            {"role": "user", "content": "what is two plus two?"},
            {"role": "assistant", "content": "four " * (i + 2)},
        )
        docs.append(Document(f"chat-{i}", messages=msgs))
    return docs


def cfg_for(out: Path, **kw) -> ExtractConfig:
    base = dict(out=str(out), skip=4, positions_per_doc=3, chunk_docs=8, batch_tokens=256)
    base.update(kw)
    return ExtractConfig(**base)


def all_rows(out: Path) -> dict[str, list]:
    return {s: read_split(out, s).to_pylist() for s in SPLITS}


def test_choose_positions_is_seeded_per_document() -> None:
    a = choose_positions("doc-1", 100, 50, 10, seed=0)
    assert a == choose_positions("doc-1", 100, 50, 10, seed=0)
    assert a == sorted(set(a)) and len(a) == 10 and all(50 <= p < 100 for p in a)
    assert a != choose_positions("doc-2", 100, 50, 10, seed=0)
    assert a != choose_positions("doc-1", 100, 50, 10, seed=1)
    assert choose_positions("d", 53, 50, 10, seed=0) == [50, 51, 52]
    assert choose_positions("d", 50, 50, 10, seed=0) == []


def test_plan_batches_buckets_by_length_within_budget() -> None:
    lengths = [5, 40, 7, 39, 6, 41, 100]
    batches = plan_batches(lengths, 80)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [6]  # longer than the budget: alone
    for b in batches:
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 80
    assert [set(b) for b in batches][2:] == [{1, 3}, {0, 2, 4}]  # similar lengths share a batch


def test_chat_is_tokenised_in_one_step_and_keeps_positions_after_the_prompt(tiny_target) -> None:
    tok = tiny_target.tokenizer
    msgs = ({"role": "user", "content": "what is two plus two?"}, {"role": "assistant", "content": "four"})
    enc = encode_document(tok, Document("c", messages=msgs), max_tokens=512, skip=50)
    expected = tok.apply_chat_template(list(msgs), tokenize=True)
    expected = expected["input_ids"] if hasattr(expected, "keys") else expected
    assert enc.ids == list(expected)
    assert enc.ids[1] != tok.bos_token_id  # no second BOS
    header = tok("<|im_start|>user\n")["input_ids"]
    assert enc.start == len(header) < 50  # skip capped at the template prefix, not at 50
    text = encode_document(tok, Document("t", text="the quick brown fox"), max_tokens=3, skip=50)
    assert len(text.ids) == 3 and text.start == 50


def test_rows_equal_hf_hidden_states_and_do_not_depend_on_batching(tmp_path, tiny_target) -> None:
    docs = make_docs()
    layer = 1  # not the last block: HF applies the final norm to the last hidden state
    a = extract(cfg_for(tmp_path / "a", layer=layer), tiny_target, documents=docs)
    b = extract(cfg_for(tmp_path / "b", layer=layer, batch_tokens=4096), tiny_target, documents=docs[::-1])
    c = extract(cfg_for(tmp_path / "c", layer=layer, chunk_docs=3), tiny_target, documents=docs)
    assert a.n_docs == len(docs) and a.n_rows == sum(a.rows_per_split.values()) > 0
    assert a.rows_per_split == b.rows_per_split == c.rows_per_split
    by_id = {d.doc_id: d for d in docs}
    for split in SPLITS:
        ta, tb, tc = (read_split(p, split) for p in (tmp_path / "a", tmp_path / "b", tmp_path / "c"))
        for other in (tb, tc):
            assert ta.drop_columns(["activation_vector"]).equals(other.drop_columns(["activation_vector"]))
            torch.testing.assert_close(vectors(ta), vectors(other), rtol=1e-5, atol=1e-5)
        rows = ta.to_pylist()
        assert [r["doc_id"] for r in rows] == sorted(r["doc_id"] for r in rows)  # canonical order
        assert all(split_of(r["doc_id"]) == split for r in rows)
        for r in rows[:12]:  # naive reference: one document, full forward, hidden_states[L + 1]
            enc = encode_document(tiny_target.tokenizer, by_id[r["doc_id"]], 512, 4)
            with torch.no_grad():
                hs = tiny_target.model(torch.tensor([enc.ids]), output_hidden_states=True).hidden_states
            torch.testing.assert_close(
                torch.tensor(r["activation_vector"]), hs[layer + 1][0, r["position"]], rtol=1e-4, atol=1e-4
            )
            assert r["n_raw_tokens"] == r["position"] + 1 and r["activation_layer"] == layer
            assert r["detokenized_text_truncated"].endswith(r["token"])
    assert assert_disjoint(tmp_path / "a")["eval"] >= 0
    side = read_dataset_meta(tmp_path / "a")
    part = (tmp_path / "a" / "rl" / "part-00000.parquet.nla_meta.yaml").read_text()
    assert "kind: nla_dataset" in part and "schema_version: 1" in part and "norm: none" in part
    assert side["extraction"]["layer_index"] == layer and side["d_model"] == 64
    assert side["provenance"]["positions_per_doc"] == 3 and side["provenance"]["skip"] == 4
    assert not work_dir_for(tmp_path / "a").exists()


def test_later_blocks_never_run(tmp_path, tiny_target) -> None:
    ran: list[int] = []
    for i, block in enumerate(tiny_target.layers):
        block.register_forward_hook(lambda *_a, i=i: ran.append(i))
    extract(cfg_for(tmp_path / "o", layer=0), tiny_target, documents=make_docs(6, chats=0))
    assert ran and set(ran) == {0}


def test_short_documents_are_skipped_and_counted(tmp_path, tiny_target) -> None:
    docs = make_docs(10, chats=0) + [Document("short", text="the"), Document("empty", text="")]
    res = extract(cfg_for(tmp_path / "o", skip=2, positions_per_doc=2), tiny_target, documents=docs)
    short = [d for d in docs if len(encode_document(tiny_target.tokenizer, d, 512, 2).ids) <= 2]
    assert len(short) >= 2 and res.n_skipped_short == len(short) and res.n_used_docs == len(docs) - len(short)
    assert "short" not in {r["doc_id"] for rows in all_rows(tmp_path / "o").values() for r in rows}
    with pytest.raises(NLAError, match="no usable document"):
        extract(cfg_for(tmp_path / "none", skip=1000), tiny_target, documents=docs)
    assert not (tmp_path / "none").exists() and not work_dir_for(tmp_path / "none").exists()


@pytest.mark.parametrize(
    ("kw", "docs", "match"),
    [
        ({"layer": 3}, None, "out of range"),
        ({}, [], "no documents"),
        ({}, [Document("x", text="a"), Document("x", text="b")], "two documents"),
    ],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, tiny_target, kw, docs, match) -> None:
    with pytest.raises(NLAError, match=match):
        extract(cfg_for(tmp_path / "o", **kw), tiny_target, documents=make_docs(4) if docs is None else docs)
    assert not (tmp_path / "o").exists() and not work_dir_for(tmp_path / "o").exists()


def test_unwritable_output_and_existing_output(tmp_path, tiny_target) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(NLAError, match="cannot write"):
        extract(cfg_for(tmp_path / "file" / "o"), tiny_target, documents=make_docs(4))
    docs = make_docs(8)
    first = extract(cfg_for(tmp_path / "o"), tiny_target, documents=docs)
    again = extract(cfg_for(tmp_path / "o"), tiny_target, documents=docs)  # same settings: nothing to do
    assert again.tokens == 0 and again.n_rows == first.n_rows
    with pytest.raises(NLAError, match="already exists"):
        extract(cfg_for(tmp_path / "o", seed=1), tiny_target, documents=docs)
    res = extract(cfg_for(tmp_path / "o", seed=1, overwrite=True), tiny_target, documents=docs)
    assert res.tokens > 0 and read_dataset_meta(tmp_path / "o")["provenance"]["seed"] == 1
    (tmp_path / "empty").mkdir()  # an empty directory made by the user is fine
    assert extract(cfg_for(tmp_path / "empty"), tiny_target, documents=docs).n_rows == first.n_rows
    work = work_dir_for(tmp_path / "p")
    (work).mkdir()
    (work / "settings.json").write_text(json.dumps({"fingerprint": "other"}))
    with pytest.raises(NLAError, match="other settings"):
        extract(cfg_for(tmp_path / "p"), tiny_target, documents=docs)


def test_cli_unknown_model_is_one_error_line(tmp_path, capsys) -> None:
    code = main(["extract", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("nla: error:")
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = save_tiny_target(root / "model")
    docs = make_docs(60, seed=1)
    corpus = root / "docs.jsonl"
    with corpus.open("w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"doc_id": d.doc_id, "text": d.text, "messages": d.messages}) + "\n")
    runner = root / "run_nla.py"
    runner.write_text(RUNNER)
    reference = root / "reference"
    extract(cfg_for(reference, model=str(model), chunk_docs=4), documents=docs)
    return root, model, corpus, runner, reference


def _cli_args(model: Path, corpus: Path, out: Path) -> list[str]:
    return [
        "extract",
        "--model",
        str(model),
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--skip",
        "4",
        "--positions-per-doc",
        "3",
        "--chunk-docs",
        "4",
        "--batch-tokens",
        "256",
    ]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def assert_same_dataset(a: Path, b: Path) -> None:
    for split in SPLITS:
        ta, tb = read_split(a, split), read_split(b, split)
        assert ta.drop_columns(["activation_vector"]).equals(tb.drop_columns(["activation_vector"]))
        torch.testing.assert_close(vectors(ta), vectors(tb), rtol=1e-5, atol=1e-5)


def test_sigkill_then_rerun_equals_an_uninterrupted_run(cli_setup, tmp_path) -> None:
    root, model, corpus, runner, reference = cli_setup
    out = tmp_path / "o"
    cmd = [sys.executable, str(runner), *_cli_args(model, corpus, out)]
    proc = subprocess.Popen(
        cmd, env=_env(NLA_TEST_CHUNK_SLEEP="0.5"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    chunks = work_dir_for(out) / "chunks"
    deadline = time.monotonic() + 60
    while len(list(chunks.glob("chunk-*.parquet"))) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(chunks.glob("chunk-*.parquet")))
    assert 2 <= done < 16 and not out.exists()  # killed mid-run: some chunks done, no output yet
    rerun = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done} of 16 chunks already done" in rerun.stderr
    assert_same_dataset(out, reference)
    assert not work_dir_for(out).exists()


def test_two_process_data_parallel_equals_single_process(cli_setup, tmp_path) -> None:
    root, model, corpus, runner, reference = cli_setup
    out = tmp_path / "o"
    # --device cpu makes each rank join a gloo group (also on machines without a GPU)
    cmd = accelerate_cpu_command(str(runner), *_cli_args(model, corpus, out), "--device", "cpu")
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count('"rows"') == 1  # only rank 0 reports
    assert "rank 0/2 (gloo): 8 chunks to do" in run.stderr and "rank 1/2 (gloo): 8 chunks to do" in run.stderr
    assert_same_dataset(out, reference)


@pytest.mark.slow
def test_smollm2_default_layer_and_chat_docs_yield_positions(smollm2, tmp_path) -> None:
    msgs = ({"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue, like the sky."})
    docs = [Document("chat", messages=msgs), Document("web", text=" ".join(["The river flows to the sea."] * 12))]
    res = extract(ExtractConfig(out=str(tmp_path / "o")), smollm2, documents=docs)
    assert res.n_used_docs == 2 and res.n_skipped_short == 0
    rows = [r for rows in all_rows(tmp_path / "o").values() for r in rows]
    chat = [r for r in rows if r["doc_id"] == "chat"]
    assert chat and all(r["position"] >= 20 for r in chat)  # after the ~20-token system prompt
    assert {r["activation_layer"] for r in rows} == {20}
    assert all(10 < torch.tensor(r["activation_vector"]).norm() < 2000 for r in rows)  # raw, not normalised
