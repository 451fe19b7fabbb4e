"""The token-lookup control: per-token mean vectors with back-off, and its place on the card."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nla.common.errors import NLAError
from nla.core.metrics import unit
from nla.evaluate.card import EvalConfig, evaluation_card, format_card, lookup_controls
from nla.evaluate.lookup import last_token_ids, lookup_predict, token_lookup_control, token_lookup_rows


def test_lookup_backs_off_to_shorter_keys_then_to_the_mean() -> None:
    e = torch.eye(4)
    train_keys = [[("a", "x"), ("x",)], [("b", "x"), ("x",)], [("c", "y"), ("y",)]]
    train = torch.stack([e[0] * 5, e[1], e[2] * 2])  # normalised before averaging
    held = [[("a", "x"), ("x",)], [("z", "x"), ("x",)], [("q", "w"), ("w",)]]
    pred, levels = lookup_predict(train_keys, train, held)
    assert levels == [0, 1, 2]
    assert torch.allclose(pred[0], e[0])
    assert torch.allclose(pred[1], (e[0] + e[1]) / 2)
    assert torch.allclose(pred[2], unit(train).mean(0))


def test_rows_keyed_by_their_final_tokens_are_predicted_exactly() -> None:
    g = torch.Generator().manual_seed(0)
    table = {t: torch.randn(16, generator=g) for t in range(5)}
    train_ids = [(p, t) for t in range(5) for p in range(3)]
    train = torch.stack([table[t] * (1 + p) for p, t in train_ids])  # the final token alone decides the direction
    held_ids = [(9, 0), (1, 3), (2, 7)]  # unseen pair, seen pair, unseen final token
    held = torch.stack([table[0], table[3], torch.randn(16, generator=g)])
    out = token_lookup_rows(train_ids, train, held_ids, held)
    assert out["final"][:2].abs().max() < 1e-5 and out["last_two"][:2].abs().max() < 1e-5
    assert out["final"][2] > 0.1
    assert out["final_seen"] == pytest.approx(2 / 3) and out["last_two_seen"] == pytest.approx(1 / 3)


def test_control_from_context_texts(tiny_target) -> None:
    tok = tiny_target.tokenizer
    ctxs = ["The quick brown fox", "Paris is the capital", "The lazy dog", "def add(a, b)"]
    ids = last_token_ids(tok, ctxs)
    assert all(1 <= len(i) <= 2 for i in ids) and ids[0][-1] == tok("The quick brown fox")["input_ids"][-1]
    vecs = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    m = token_lookup_control(vecs, ctxs, vecs, ctxs, tok, baseline=0.5)
    assert m["fve_token_lookup"] == pytest.approx(1.0, abs=1e-5) and m["token_lookup_seen"] == 1.0
    assert m["token_lookup_train_rows"] == 4.0


def _parquet(path: Path, vecs: torch.Tensor, ctxs: list[str]) -> str:
    table = pa.table(
        {
            "activation_vector": pa.array(vecs.tolist(), pa.list_(pa.float32())),
            "doc_id": [f"d{i}" for i in range(len(ctxs))],
            "detokenized_text_truncated": ctxs,
            "explanation": [f"the text ends with {c.split()[-1]}" for c in ctxs],
        }
    )
    pq.write_table(table, path)
    return str(path)


def test_card_prints_the_lookup_beside_the_other_controls(tmp_path: Path, tiny_target) -> None:
    from nla.models.ar import ActivationReconstructor
    from nla.models.target import load_target

    from helpers import save_tiny_target

    save_tiny_target(tmp_path / "target")
    ActivationReconstructor.from_target(load_target(str(tmp_path / "target")), 1).save_pretrained(tmp_path / "ar")
    ctxs = ["The quick brown fox", "Paris is the capital", "The lazy dog", "def add(a, b)"] * 2
    d = tiny_target.d_model
    vecs = torch.randn(4, d, generator=torch.Generator().manual_seed(3)).repeat(2, 1)  # one vector per final token
    cfg = EvalConfig(
        sft_ar=str(tmp_path / "ar"),
        data=_parquet(tmp_path / "eval.parquet", vecs, ctxs),
        train_data=_parquet(tmp_path / "train.parquet", vecs, ctxs),
        rows=8,
        out=str(tmp_path / "card.json"),
    )
    card = evaluation_card(cfg)
    assert card["controls"]["fve_token_lookup"] == pytest.approx(1.0, abs=1e-5)  # the lookup is exact here
    assert card["controls"]["fve_token_lookup"] > card["ar_sft_teacher"]["fve_nrm"]  # an untrained AR is not
    assert set(card["token_lookup"]) >= {"fve_token_lookup", "fve_token_lookup_2", "token_lookup_seen"}
    assert json.loads((tmp_path / "card.json").read_text())["controls"]["fve_token_lookup_2"] is not None
    # a second card on the same rows keeps the first one's stages; a card on other rows is refused
    again = evaluation_card(EvalConfig(**{**cfg.__dict__, "out": "", "earlier": cfg.out}))
    assert again["heldout_fingerprint"] == card["heldout_fingerprint"]
    assert again["earlier"]["stages"]["ar_sft_teacher"]["fve_nrm"] == card["ar_sft_teacher"]["fve_nrm"]
    with pytest.raises(NLAError, match="not measured on these held-out rows"):
        evaluation_card(EvalConfig(**{**cfg.__dict__, "out": "", "earlier": cfg.out, "rows": 4}))
    text = format_card(card, examples=False)
    assert "token lookup (no model" in text and f"{card['controls']['fve_token_lookup']:+.3f}" in text
    # no separate training split: no lookup (a table filled from the held-out rows would leak)
    assert lookup_controls(EvalConfig(sft_ar=str(tmp_path / "ar")), None, vecs, ctxs, 0.5) == {}


def test_table_rows_of_an_extract_dir_take_every_training_split(tmp_path: Path) -> None:
    from nla.evaluate.lookup import table_rows

    (tmp_path / "nla_meta.yaml").write_text("kind: nla_dataset\n")
    for i, split in enumerate(("av_sft", "ar_sft", "rl", "eval")):
        (tmp_path / split).mkdir()
        _parquet(
            tmp_path / split / "part-00000.parquet", torch.full((2, 4), float(i + 1)), [f"{split} a", f"{split} b"]
        )
    rows = table_rows(tmp_path)
    assert rows.vectors.shape == (6, 4) and rows.contexts[0] == "av_sft a" and "eval a" not in rows.contexts
    single = table_rows(tmp_path / "rl" / "part-00000.parquet")
    assert single.vectors.shape == (2, 4)
