"""``nla verbalize``: an AV's explanations of a split as teacher-format parquet, resumable."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from nla.cli import main
from nla.common.errors import NLAError
from nla.core.metrics import mse_nrm
from nla.models.ar import ActivationReconstructor
from nla.models.av import ActivationVerbalizer
from nla.models.target import load_target
from nla.train.ar import load_ar_data
from nla.verbalize import VerbalizeConfig, verbalize

from helpers import save_tiny_target


def _setup(tmp_path: Path, n: int = 10) -> tuple[Path, Path]:
    base = str(save_tiny_target(tmp_path / "base", "llama"))
    ActivationVerbalizer.from_target(load_target(base), injection_scale=5.0, layer=1).save_pretrained(tmp_path / "av")
    g = torch.Generator().manual_seed(0)
    table = pa.table({
        "activation_vector": pa.array(torch.randn(n, 64, generator=g).tolist(), pa.list_(pa.float32())),
        "doc_id": [f"doc{i // 2}" for i in range(n)],
        "detokenized_text_truncated": [f"context {i}" for i in range(n)],
    })  # fmt: skip
    (tmp_path / "acts" / "ar_sft").mkdir(parents=True)
    part = tmp_path / "acts" / "ar_sft" / "part-00000.parquet"
    pq.write_table(table, part)
    meta = {"kind": "nla_dataset", "d_model": 64, "extraction": {"base_model": base, "layer_index": 1}}
    Path(str(part) + ".nla_meta.yaml").write_text(yaml.safe_dump(meta))
    return tmp_path / "av", tmp_path / "acts"


def _cfg(av: Path, acts: Path, out: Path) -> VerbalizeConfig:
    return VerbalizeConfig(av=str(av), data=str(acts), out=str(out), max_new_tokens=6, chunk_size=4, batch_size=3)


def test_verbalize_writes_teacher_format_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    av, acts = _setup(tmp_path)
    whole = verbalize(_cfg(av, acts, tmp_path / "whole.parquet"))
    table = pq.read_table(whole)
    assert table.num_rows == 10
    assert {"activation_vector", "doc_id", "explanation", "response", "tag_ok", "teacher"} <= set(table.column_names)
    meta = yaml.safe_load(Path(str(whole) + ".nla_meta.yaml").read_text())
    assert meta["kind"] == "nla_dataset" and meta["extraction"]["layer_index"] == 1
    assert meta["verbalize"]["rows"] == 10 and meta["teacher"]["name"] == "av"
    assert load_ar_data(whole).vectors.shape[1] == 64  # what `nla train ar` reads

    real, calls = ActivationVerbalizer.sample, []

    def dies_on_second_chunk(self, vectors, **kw):
        calls.append(vectors.shape[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, vectors, **kw)

    monkeypatch.setattr(ActivationVerbalizer, "sample", dies_on_second_chunk)
    out = tmp_path / "killed.parquet"
    with pytest.raises(KeyboardInterrupt):
        verbalize(_cfg(av, acts, out))
    assert not out.exists() and len(list(Path(str(out) + ".work").glob("chunk-*.parquet"))) == 1
    calls.clear()
    monkeypatch.setattr(
        ActivationVerbalizer, "sample", lambda self, v, **kw: (calls.append(v.shape[0]), real(self, v, **kw))[1]
    )
    verbalize(_cfg(av, acts, out))
    assert calls == [4, 2]  # only the two unfinished chunks
    assert pq.read_table(out).column("response").to_pylist() == table.column("response").to_pylist()
    assert not Path(str(out) + ".work").exists()

    # a run stopped early is finished with a smaller --limit: whole chunks are kept, a cut one is redone
    calls.clear()
    monkeypatch.setattr(ActivationVerbalizer, "sample", dies_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        verbalize(_cfg(av, acts, out))
    calls.clear()
    monkeypatch.setattr(
        ActivationVerbalizer, "sample", lambda self, v, **kw: (calls.append(v.shape[0]), real(self, v, **kw))[1]
    )
    short = _cfg(av, acts, out)
    short.limit = 6
    verbalize(short)
    assert calls == [2]  # chunk 0 (rows 0-3) kept; chunk 1 now holds rows 4-5
    assert pq.read_table(out).column("response").to_pylist() == table.column("response").to_pylist()[:6]


def test_verbalize_errors(tmp_path: Path, capsys) -> None:
    av, acts = _setup(tmp_path, n=4)
    with pytest.raises(NLAError, match="--av"):
        verbalize(VerbalizeConfig(data=str(acts), out=str(tmp_path / "o.parquet")))
    assert (
        main(["verbalize", "--av", str(av), "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o.parquet")])
        == 2
    )
    assert "is not a directory" in capsys.readouterr().err
    assert not (tmp_path / "o.parquet").exists()


def test_verbalize_best_of_keeps_the_answer_the_ar_reads_best(tmp_path: Path) -> None:
    av, acts = _setup(tmp_path, n=6)
    ActivationReconstructor.from_target(load_target(str(tmp_path / "base")), 1).save_pretrained(tmp_path / "ar")
    cfg = _cfg(av, acts, tmp_path / "best.parquet")
    cfg.ar, cfg.best_of, cfg.temperature, cfg.offset, cfg.limit = str(tmp_path / "ar"), 3, 1.5, 1, 4
    table = pq.read_table(verbalize(cfg))
    assert table.num_rows == 4 and table.column("doc_id").to_pylist() == ["doc0", "doc1", "doc1", "doc2"]
    chosen, greedy = table.column("mse_nrm").to_pylist(), table.column("mse_greedy").to_pylist()
    assert all(c <= g + 1e-6 for c, g in zip(chosen, greedy, strict=True))
    assert set(table.column("chosen").to_pylist()) <= {0, 1, 2}

    # the stored mse is the AR's reading of the stored explanation, for the row's own vector
    ar = ActivationReconstructor.from_pretrained(tmp_path / "ar")
    pred = ar.predict(table.column("explanation").to_pylist())
    gold = torch.tensor(table.column("activation_vector").to_pylist())
    assert torch.allclose(mse_nrm(pred, gold), torch.tensor(chosen), atol=1e-4)
    meta = yaml.safe_load(Path(str(cfg.out) + ".nla_meta.yaml").read_text())["verbalize"]
    assert meta["best_of"] == 3 and meta["offset"] == 1
    assert meta["mean_mse_nrm_chosen"] <= meta["mean_mse_nrm_greedy"]

    cfg = _cfg(av, acts, tmp_path / "every.parquet")
    cfg.offset, cfg.every = 1, 2
    assert pq.read_table(verbalize(cfg)).column("doc_id").to_pylist() == ["doc0", "doc1", "doc2"]  # rows 1, 3, 5

    with pytest.raises(ValueError, match="needs --ar"):
        VerbalizeConfig(best_of=2)
    with pytest.raises(NLAError, match="--offset 6"):
        verbalize(VerbalizeConfig(av=str(av), data=str(acts), out=str(tmp_path / "o.parquet"), offset=6))


def test_verbalize_in_bfloat16_writes_every_row_and_records_its_dtype(tmp_path: Path) -> None:
    av, acts = _setup(tmp_path, n=5)
    cfg = _cfg(av, acts, tmp_path / "bf16.parquet")
    cfg.dtype = "bfloat16"
    table = pq.read_table(verbalize(cfg))
    assert table.num_rows == 5 and all(isinstance(r, str) for r in table.column("response").to_pylist())
    meta = yaml.safe_load(Path(str(cfg.out) + ".nla_meta.yaml").read_text())["verbalize"]
    assert meta["dtype"] == "bfloat16"
    with pytest.raises(ValueError, match="dtype must be float32 or bfloat16"):
        VerbalizeConfig(dtype="float16")
