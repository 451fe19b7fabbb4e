from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nla.common.errors import NLAError
from nla.data.activations import (
    SCHEMA,
    SPLITS,
    STATS_KEY,
    assert_disjoint,
    check_fractions,
    read_dataset_meta,
    read_split,
    split_of,
    vectors,
    write_dataset,
)


def _chunk(path, rows: list[tuple[str, str, int]], d: int = 4) -> None:
    """A chunk file: rows of (doc_id, split, position) with vector = [position] * d."""
    table = pa.table(
        {
            "activation_vector": pa.array([[float(p)] * d for _, _, p in rows], type=pa.list_(pa.float32())),
            "doc_id": [r[0] for r in rows],
            "position": pa.array([r[2] for r in rows], type=pa.int32()),
            "n_raw_tokens": pa.array([r[2] + 1 for r in rows], type=pa.int32()),
            "activation_layer": pa.array([1] * len(rows), type=pa.int32()),
            "detokenized_text_truncated": ["ctx"] * len(rows),
            "token": ["t"] * len(rows),
            "split": [r[1] for r in rows],
        }
    )
    stats = {"docs": len({r[0] for r in rows}), "used": len({r[0] for r in rows}), "rows": len(rows), "tokens": 7}
    pq.write_table(table.replace_schema_metadata({STATS_KEY: json.dumps(stats).encode()}), path)


META = {
    "d_model": 4,
    "extraction": {"base_model": "m", "layer_index": 1, "mse_scale": "sqrt_d_model", "injection_scale": None},
    "provenance": {"seed": 0},
}


def test_split_of_is_stable_and_follows_fractions() -> None:
    ids = [f"doc-{i}" for i in range(4000)]
    got = [split_of(i) for i in ids]
    assert got == [split_of(i) for i in ids]  # deterministic, order independent
    share = {s: got.count(s) / len(got) for s in SPLITS}
    for s, f in zip(SPLITS, (0.25, 0.25, 0.4, 0.1), strict=True):
        assert abs(share[s] - f) < 0.03
    assert {split_of(i, (0, 0, 1, 0)) for i in ids[:50]} == {"rl"}
    assert [split_of(i, seed=1) for i in ids[:200]] != got[:200]


def test_check_fractions_rejects_bad_input() -> None:
    with pytest.raises(NLAError, match="sum to 1"):
        check_fractions([0.5, 0.5, 0.5, 0.0])
    with pytest.raises(NLAError, match="need 4"):
        check_fractions([1.0])


def test_write_and_read_dataset_roundtrip(tmp_path) -> None:
    _chunk(tmp_path / "c0.parquet", [("a", "rl", 3), ("a", "rl", 5), ("b", "eval", 2)])
    _chunk(tmp_path / "c1.parquet", [("c", "rl", 9)])
    out = tmp_path / "ds"
    summary = write_dataset([tmp_path / "c0.parquet", tmp_path / "c1.parquet"], out, META, shard_rows=2)
    assert summary["splits"]["rl"] == {
        "rows": 3,
        "docs": 2,
        "files": ["rl/part-00000.parquet", "rl/part-00001.parquet"],
    }
    rl = read_split(out, "rl")
    assert rl.schema.equals(SCHEMA)
    assert rl.column("doc_id").to_pylist() == ["a", "a", "c"]  # chunk order preserved across parts
    torch.testing.assert_close(vectors(rl), torch.tensor([[3.0] * 4, [5.0] * 4, [9.0] * 4]))
    assert read_split(out, "av_sft").num_rows == 0  # empty split: empty part + sidecar
    assert (out / "av_sft" / "part-00000.parquet.nla_meta.yaml").exists()
    assert read_split(out, "eval", columns=["position"]).column_names == ["position"]
    meta = read_dataset_meta(out)
    assert meta["kind"] == "nla_dataset" and meta["n_rows"] == 4 and meta["n_tokens"] == 14
    assert assert_disjoint(out) == {"av_sft": 0, "ar_sft": 0, "rl": 2, "eval": 1}


def test_leaked_document_is_caught(tmp_path) -> None:
    _chunk(tmp_path / "c0.parquet", [("a", "rl", 3), ("a", "eval", 5)])
    with pytest.raises(NLAError, match="both"):
        write_dataset([tmp_path / "c0.parquet"], tmp_path / "ds", META)
    assert not (tmp_path / "ds").exists()  # nothing half-written


def test_reading_a_non_dataset_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(NLAError, match="not an nla activation dataset"):
        read_split(tmp_path, "rl")
    with pytest.raises(NLAError, match="unknown split"):
        read_split(tmp_path, "train")


def _teacher_file(path, vecs: list[list[float] | None], **extra) -> None:
    cols = {"activation_vector": pa.array(vecs, type=pa.list_(pa.float32())), **extra}
    pq.write_table(pa.table(cols), path)


def test_read_parquet_reads_a_file_a_folder_and_a_split(tmp_path) -> None:
    from nla.common.meta import dataset_sidecar_path, write_sidecar
    from nla.data.activations import read_parquet

    folder = tmp_path / "parts"
    folder.mkdir()
    _teacher_file(folder / "a.parquet", [[1.0, 2.0]], explanation=["x"])
    _teacher_file(folder / "b.parquet", [[3.0, 4.0], [5.0, 6.0]], explanation=["y", "z"], extra=[1, 2])
    write_sidecar(dataset_sidecar_path(folder / "a.parquet"), {"kind": "nla_dataset", "d_model": 2})
    both = read_parquet(folder)
    assert both.table.num_rows == 3 and [f.name for f in both.files] == ["a.parquet", "b.parquet"]
    assert both.sidecar["d_model"] == 2 and both.table.column("extra").to_pylist() == [None, 1, 2]
    only = read_parquet(folder / "b.parquet", columns=["explanation", "missing"])
    assert only.table.column_names == ["explanation"] and only.sidecar == {}
    with pytest.raises(NLAError, match="lacks column"):
        read_parquet(folder, require=["response"])
    with pytest.raises(NLAError, match="not found"):
        read_parquet(tmp_path / "nope.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(NLAError, match="not a readable parquet"):
        read_parquet(tmp_path / "junk.parquet")
    _teacher_file(folder / "c.parquet", [[7.0, 8.0]], explanation=[3])
    with pytest.raises(NLAError, match="incompatible schemas"):
        read_parquet(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NLAError, match="no ar_sft rows"):
        read_parquet(tmp_path / "empty", split="ar_sft")


def test_activation_matrix_flags_rows_without_a_vector_of_the_common_length() -> None:
    from nla.data.activations import activation_matrix

    table = pa.table({"activation_vector": pa.array([[1.0, 2.0], None, [3.0], [4.0, 5.0]], pa.list_(pa.float32()))})
    vecs, missing = activation_matrix(table)
    assert vecs.tolist() == [[1.0, 2.0], [0.0, 0.0], [0.0, 0.0], [4.0, 5.0]]
    assert missing.tolist() == [False, True, True, False]
    with pytest.raises(NLAError, match="different lengths"):
        vectors(table)
