from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from nla.cli import main
from nla.common.errors import NLAError
from nla.core.text import wrap_explanation
from nla.teach.run import AnswerCache, TeachConfig, teach

from helpers import FakeJsonServer, save_tiny_target

KEY = "sk-test-SECRET-teach-42"


def write_split(
    root: Path, contexts: list[str], *, split: str = "ar_sft", base_model: str = "tiny", shards: int = 2
) -> Path:
    """A tiny extraction directory: ``<root>/<split>/part-*.parquet`` + per-shard sidecars."""
    rows = {
        "activation_vector": [[float(i), 1.0, -1.0, 0.5] for i in range(len(contexts))],
        "doc_id": [f"doc{i // 3}" for i in range(len(contexts))],
        "position": [i % 3 + 50 for i in range(len(contexts))],
        "n_raw_tokens": [60] * len(contexts),
        "activation_layer": [2] * len(contexts),
        "detokenized_text_truncated": contexts,
        "token": [c.split()[-1] if c.split() else "" for c in contexts],
    }
    table = pa.table(rows, schema=pa.schema([
        ("activation_vector", pa.list_(pa.float32())), ("doc_id", pa.string()), ("position", pa.int32()),
        ("n_raw_tokens", pa.int32()), ("activation_layer", pa.int32()),
        ("detokenized_text_truncated", pa.string()), ("token", pa.string()),
    ]))  # fmt: skip
    (root / split).mkdir(parents=True)
    step = -(-len(contexts) // shards)
    for s in range(shards):
        part = root / split / f"part-{s:05d}.parquet"
        pq.write_table(table.slice(s * step, step), part)
        meta = {"kind": "nla_dataset", "d_model": 4, "n_rows": step,
                "extraction": {"base_model": base_model, "layer_index": 2, "mse_scale": "sqrt_d_model"}}  # fmt: skip
        Path(str(part) + ".nla_meta.yaml").write_text(yaml.safe_dump(meta))
    return root


class CountingTeacher:
    """A fake teacher: answers from a function, records every context it is asked, can fail after N."""

    def __init__(
        self, reply=None, *, fail_after: int | None = None, max_batch: int = 1, parallel: bool = False
    ) -> None:
        self.name, self.model, self.version = "fake", "m", "v1"
        self.max_batch, self.parallel = max_batch, parallel
        self.reply = reply or (lambda c: f"<explanation>About {c}.\nFinal token of {c}.</explanation>")
        self.fail_after, self.calls = fail_after, []

    def answer(self, contexts: list[str]) -> list[str | None]:
        out = []
        for c in contexts:
            if self.fail_after is not None and len(self.calls) >= self.fail_after:
                raise RuntimeError("teacher died")
            self.calls.append(c)
            out.append(self.reply(c))
        return out


def cfg(data: Path, out: Path, **kw) -> TeachConfig:
    return TeachConfig(data=str(data), out=str(out), **kw)


def test_teach_writes_kept_rows_response_and_sidecar(tmp_path) -> None:
    contexts = [f"context number {i}" for i in range(7)]
    replies = {contexts[2]: "<explanation>just one feature</explanation>", contexts[5]: "<explanation>a\nb (cut off"}
    data = write_split(tmp_path / "acts", contexts)
    out = tmp_path / "t" / "teach.parquet"
    res = teach(
        cfg(data, out), CountingTeacher(lambda c: replies.get(c, f"<explanation>1. About {c}\n2. End</explanation>"))
    )
    assert (res.n_rows, res.n_kept, res.drops) == (7, 5, {"no_closing_tag": 1, "too_few_features": 1})
    table = pq.read_table(out)
    assert table.column_names[:7] == ["activation_vector", "doc_id", "position", "n_raw_tokens", "activation_layer",
                                      "detokenized_text_truncated", "token"]  # fmt: skip
    assert table.column_names[7:] == ["explanation", "response", "teacher"]
    assert table.column("detokenized_text_truncated").to_pylist() == [
        c for i, c in enumerate(contexts) if i not in (2, 5)
    ]
    assert table.column("explanation").to_pylist()[0] == "About context number 0\nEnd"
    assert table.column("response").to_pylist() == [
        wrap_explanation(e) for e in table.column("explanation").to_pylist()
    ]
    assert set(table.column("teacher").to_pylist()) == {"fake:m"}
    assert table.column("activation_vector").to_pylist()[1] == [1.0, 1.0, -1.0, 0.5]
    meta = yaml.safe_load(Path(str(out) + ".nla_meta.yaml").read_text())
    assert meta["kind"] == "nla_dataset" and meta["n_rows"] == 5
    assert meta["extraction"]["base_model"] == "tiny" and meta["d_model"] == 4
    assert meta["teacher"]["name"] == "fake" and meta["teach"]["drops"] == res.drops
    assert meta["teach"]["explanation_format"] == "features, one per line"
    assert not Path(str(out) + ".work").exists()


def test_killed_run_resumes_without_asking_finished_rows_again(tmp_path) -> None:
    contexts = [f"row {i}" for i in range(10)]
    data = write_split(tmp_path / "acts", contexts)
    out = tmp_path / "t.parquet"
    first = CountingTeacher(fail_after=5)
    with pytest.raises(RuntimeError, match="teacher died"):
        teach(cfg(data, out, chunk_size=3, cache=False), first)
    assert not out.exists() and sorted(p.name for p in (tmp_path / "t.parquet.work").glob("chunk-*")) == [
        "chunk-00000.parquet"
    ]
    second = CountingTeacher()
    res = teach(cfg(data, out, chunk_size=3, cache=False), second)
    assert second.calls == contexts[3:] and res.n_resumed == 3 and res.n_asked == 7
    clean = tmp_path / "clean.parquet"
    teach(cfg(data, clean, chunk_size=3, cache=False), CountingTeacher())
    assert pq.read_table(out).equals(pq.read_table(clean))


def test_work_dir_of_another_run_is_an_error(tmp_path) -> None:
    data = write_split(tmp_path / "acts", [f"row {i}" for i in range(6)])
    out = tmp_path / "t.parquet"
    with pytest.raises(RuntimeError):
        teach(cfg(data, out, chunk_size=2, cache=False), CountingTeacher(fail_after=3))
    with pytest.raises(NLAError, match="different chunk_size"):
        teach(cfg(data, out, chunk_size=4, cache=False), CountingTeacher())


def test_cache_means_identical_contexts_are_asked_once(tmp_path) -> None:
    contexts = ["same text", "other", "same text", "third", "other", "fourth"]
    data = write_split(tmp_path / "acts", contexts)
    first = CountingTeacher(max_batch=4)
    res1 = teach(cfg(data, tmp_path / "a.parquet"), first)
    assert sorted(first.calls) == sorted(set(contexts)) and res1.n_asked == 4 and res1.n_kept == 6
    again = CountingTeacher()
    res2 = teach(cfg(data, tmp_path / "b.parquet", limit=4), again)
    assert again.calls == [] and res2.n_cached == 3 and res2.n_kept == 4
    other_version = CountingTeacher()
    other_version.version = "v2"
    teach(cfg(data, tmp_path / "c.parquet"), other_version)
    assert len(other_version.calls) == 4


def test_openai_teacher_in_threads_never_leaks_the_key(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    contexts = [f"the story of item {i}" for i in range(9)]
    data = write_split(tmp_path / "acts", contexts)
    seen: list[str] = []

    def respond(req: dict) -> tuple[int, dict]:
        ctx = req["json"]["messages"][0]["content"].rsplit("<excerpt>", 1)[1].removesuffix("</excerpt>")
        if ctx not in seen:  # every context first gets a 429, then an answer
            seen.append(ctx)
            return 429, {"error": f"rate limited for key {KEY}"}
        return 200, {
            "choices": [{"message": {"content": f"<explanation>Topic: {ctx}\nFinal token: {ctx[-1]}</explanation>"}}]
        }

    out = tmp_path / "api.parquet"
    with FakeJsonServer(respond) as srv:
        res = teach(
            cfg(data, out, teacher="openai", model="local", base_url=srv.url + "/v1", concurrency=4, backoff=0.001)
        )
    assert res.n_kept == 9 and res.n_asked == 9 and len(srv.requests) == 18
    table = pq.read_table(out)
    assert table.column("explanation").to_pylist()[4] == "Topic: the story of item 4\nFinal token: 4"
    assert set(table.column("teacher").to_pylist()) == {"openai:local"}
    files = [out, Path(str(out) + ".nla_meta.yaml"), *Path(tmp_path).rglob("*")]
    from nla.common.paths import cache_dir

    files += list(cache_dir("teacher").glob("*"))
    for f in files:
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f
    assert KEY not in caplog.text
    assert yaml.safe_load(Path(str(out) + ".nla_meta.yaml").read_text())["teacher"]["base_url"] == srv.url + "/v1"


def test_cli_teach_offline_with_the_extraction_base_model(tmp_path, capsys) -> None:
    model = save_tiny_target(tmp_path / "tiny-model")
    doc = "Paris is the capital of France. Berlin is the capital of Germany."
    contexts = [doc[:k] for k in (12, 30, len(doc))] + ["def add(a, b):\n    return a + b"]
    data = write_split(tmp_path / "acts", contexts, base_model=str(model))
    out = tmp_path / "off.parquet"
    assert (
        main(
            [
                "teach",
                "--data",
                str(data),
                "--split",
                "ar_sft",
                "--teacher",
                "offline",
                "--limit",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["kept"] == 3 and summary["drops"] == {}
    expl = pq.read_table(out).column("explanation").to_pylist()
    assert all(len(e.split("\n")) == 3 and "The final token is" in e for e in expl)
    meta = yaml.safe_load(Path(str(out) + ".nla_meta.yaml").read_text())
    assert meta["teacher"]["model"] == str(model) and meta["teacher"]["version"].startswith("offline-")


def test_cli_errors_are_one_line(tmp_path, capsys) -> None:
    assert main(["teach", "--out", str(tmp_path / "x.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data" in err[0]
    (tmp_path / "empty").mkdir()
    assert main(["teach", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "x.parquet")]) == 2
    assert "no ar_sft rows" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["teach", "--help"])
    assert "--base-url" in capsys.readouterr().out


def test_answer_cache_roundtrip(tmp_path) -> None:
    cache = AnswerCache(tmp_path / "c.sqlite")
    t = CountingTeacher()
    k = AnswerCache.key(t, "ctx")
    assert cache.get(k) is None
    cache.put_many([(k, "answer")])
    assert AnswerCache(tmp_path / "c.sqlite").get(k) == "answer"
    t.model = "other"
    assert AnswerCache.key(t, "ctx") != k
