from __future__ import annotations

import json
import logging
import math
import shutil

import numpy as np
import pytest
import torch
import yaml

from nla.common.errors import NLAError
from nla.core.metrics import cosine
from nla.evaluate.rerank import DEFAULT_BEST_OF
from nla.explain.api import NLA
from nla.explain.inputs import encode_input, load_vector_file

TEXT = "The quick brown fox jumps over the lazy dog."
LAYER = 1


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny target saved as an HF dir, an untrained AV (copy of it) and an AR (identity head)."""
    from nla.models.ar import ActivationReconstructor
    from nla.models.av import ActivationVerbalizer
    from nla.models.target import load_target

    from helpers import save_tiny_target

    root = tmp_path_factory.mktemp("nla_ckpt")
    save_tiny_target(root / "target")
    target = load_target(str(root / "target"))
    ActivationVerbalizer.from_target(target, injection_scale=8.0, layer=LAYER).save_pretrained(root / "av")
    ActivationReconstructor.from_target(target, LAYER).save_pretrained(root / "ar")
    ActivationReconstructor.from_target(target, 0).save_pretrained(root / "ar_l0")
    return {"root": root, "target": str(root / "target"), "av": str(root / "av"), "ar": str(root / "ar")}


@pytest.fixture(scope="module")
def nla(ckpt: dict) -> NLA:
    return NLA.from_pretrained(ckpt["av"], ckpt["ar"])  # target from the AV sidecar's base_model


def test_target_defaults_to_av_base_model(nla: NLA, ckpt: dict) -> None:
    assert nla.target.name == ckpt["target"] and nla.layer == LAYER
    assert nla.baseline is None  # no eval.baseline_mse in the sidecars


@pytest.mark.parametrize("spec", ["all", "last", "0,2,-1", "1:4"])
def test_explain_one_record_per_selected_token(nla: NLA, spec: str) -> None:
    n = len(encode_input(nla.target.tokenizer, TEXT).input_ids)
    want = {"all": list(range(n)), "last": [n - 1], "0,2,-1": [0, 2, n - 1], "1:4": [1, 2, 3]}[spec]
    recs = nla.explain(TEXT, spec, max_new_tokens=3)
    assert [r.position for r in recs] == want
    for r in recs:
        assert r.cosine is not None and math.isfinite(r.cosine) and -1 <= r.cosine <= 1
        assert r.mse_nrm == pytest.approx(2 * (1 - r.cosine), abs=1e-4)
        assert r.fve is None and len(r.samples) == DEFAULT_BEST_OF  # with an AR: best of K by default
        assert r.mse_nrm == min(s.mse_nrm for s in r.samples)
    if spec == "all":
        assert "".join(r.token for r in recs) == TEXT  # token texts rebuild the input


def test_scores_are_round_trip_of_the_true_activation(nla: NLA, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = ["<explanation>a fox</explanation>", "<explanation>a dog</explanation>"]
    monkeypatch.setattr(nla.av, "generate", lambda v, **kw: [[answers[i % 2]] for i in range(v.shape[0])])
    recs = nla.explain(TEXT, "0,-1", best_of=1)
    enc = encode_input(nla.target.tokenizer, TEXT)
    acts = nla.activations(enc.input_ids)  # (T, d)
    pred = nla.ar.predict(["a fox", "a dog"])  # (2, d)
    assert [r.explanation for r in recs] == ["a fox", "a dog"]
    assert recs[0].cosine == pytest.approx(float(cosine(pred[0], acts[0])), abs=1e-5)
    assert recs[1].cosine == pytest.approx(float(cosine(pred[1], acts[-1])), abs=1e-5)
    assert recs[1].control_cosine == pytest.approx(float(cosine(nla.ar.predict([""])[0], acts[-1])), abs=1e-5)


def test_failed_injection_is_flagged(
    nla: NLA, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(nla.av, "generate", lambda v, **kw: [["漢字の説明です"] for _ in range(v.shape[0])])
    with caplog.at_level(logging.WARNING):
        recs = nla.explain(TEXT, "last", best_of=1)
    assert recs[0].cjk and recs[0].explanation is None
    assert "CJK" in caplog.text


def test_sampling_keeps_every_sample(nla: NLA) -> None:
    recs = nla.explain(TEXT, "last", max_new_tokens=3, num_samples=3, seed=0)
    assert len(recs[0].samples) == 3 and recs[0].raw == recs[0].samples[0].raw
    assert all(s.cosine is not None for s in recs[0].samples)


def test_batched_equals_one_at_a_time(nla: NLA) -> None:
    batched = nla.explain(TEXT, "0:4", max_new_tokens=4, batch_size=4, best_of=1)
    single = nla.explain(TEXT, "0:4", max_new_tokens=4, batch_size=1, best_of=1)
    assert [r.raw for r in batched] == [r.raw for r in single]


def test_chat_assistant_positions(nla: NLA) -> None:
    msgs = [{"role": "user", "content": "what is two plus two?"}, {"role": "assistant", "content": "four."}]
    recs = nla.explain(msgs, "assistant", max_new_tokens=2)
    assert "".join(r.token for r in recs) == "four."
    with pytest.raises(NLAError, match="chat"):
        nla.explain(TEXT, "assistant")


def test_bad_positions_name_the_range(nla: NLA) -> None:
    n = len(encode_input(nla.target.tokenizer, TEXT).input_ids)
    with pytest.raises(NLAError, match=rf"{-n}\.\.{n - 1}"):
        nla.explain(TEXT, "999")


def test_explain_vectors(nla: NLA) -> None:
    v = np.random.default_rng(0).normal(size=(2, 64)).astype(np.float32)
    recs = nla.explain_vectors(v, max_new_tokens=3)
    assert [r.index for r in recs] == [0, 1] and all(math.isfinite(r.cosine) for r in recs)
    assert recs[0].norm == pytest.approx(float(np.linalg.norm(v[0])), rel=1e-5)
    assert len(nla.explain_vectors(torch.from_numpy(v[0]), max_new_tokens=2)) == 1  # 1-D torch works


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.full((1, 64), np.nan), "NaN"),
        (np.array([[np.inf] + [0.0] * 63]), "inf"),
        (np.zeros(64), "zero"),
        (np.ones((2, 32)), "width 32"),
        (np.ones((2, 2, 64)), "1-D"),
    ],
)
def test_explain_vectors_rejects_bad_input(nla: NLA, bad: np.ndarray, match: str) -> None:
    with pytest.raises(NLAError, match=match):
        nla.explain_vectors(bad)


def test_checkpoint_errors(ckpt: dict, tmp_path) -> None:
    from helpers import save_tiny_target

    with pytest.raises(NLAError, match="nla_meta.yaml"):
        NLA.from_pretrained(ckpt["target"])  # a plain HF dir, no sidecar
    save_tiny_target(tmp_path / "narrow", d=32)
    with pytest.raises(NLAError, match="d_model mismatch"):
        NLA.from_pretrained(ckpt["av"], ckpt["ar"], target=str(tmp_path / "narrow"))
    with pytest.raises(NLAError, match="layer mismatch"):
        NLA.from_pretrained(ckpt["av"], str(ckpt["root"] / "ar_l0"))


def test_baseline_from_sidecar_gives_fve(ckpt: dict, tmp_path) -> None:
    ar = tmp_path / "ar"
    shutil.copytree(ckpt["ar"], ar)
    meta = yaml.safe_load((ar / "nla_meta.yaml").read_text())
    meta["eval"] = {"baseline_mse": 0.5}
    (ar / "nla_meta.yaml").write_text(yaml.safe_dump(meta))
    nla = NLA.from_pretrained(ckpt["av"], str(ar))
    assert nla.baseline == 0.5
    rec = nla.explain(TEXT, "last", max_new_tokens=2)[0]
    assert rec.fve == pytest.approx(1 - rec.mse_nrm / 0.5)


def test_vector_files(tmp_path) -> None:
    from safetensors.numpy import save_file

    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "v.npy", a)
    assert np.array_equal(load_vector_file(tmp_path / "v.npy"), a)
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}], dtype=object))
    with pytest.raises(NLAError, match="npy"):
        load_vector_file(tmp_path / "obj.npy")  # pickled objects are refused
    save_file({"a": a, "b": a[0]}, str(tmp_path / "v.safetensors"))
    assert load_vector_file(tmp_path / "v.safetensors", "b").shape == (3,)
    with pytest.raises(NLAError, match="--key"):
        load_vector_file(tmp_path / "v.safetensors")
    with pytest.raises(NLAError, match="no tensor"):
        load_vector_file(tmp_path / "v.safetensors", "c")


# ----------------------------------------------------------------------------- CLI


def test_cli_explain_writes_jsonl_and_html(ckpt: dict, tmp_path, capsys: pytest.CaptureFixture) -> None:
    from nla.cli import main

    text = "Paris <script>alert(1)</script> is big."
    out, page = tmp_path / "o.jsonl", tmp_path / "o.html"
    rc = main(
        [
            "explain",
            text,
            "--av",
            ckpt["av"],
            "--ar",
            ckpt["ar"],
            "--positions",
            "0,-1",
            "--max-new-tokens",
            "3",
            "--jsonl",
            str(out),
            "--html",
            str(page),
        ]
    )
    assert rc == 0
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 2 and rows[0]["position"] == 0 and rows[1]["cosine"] is not None
    html_text = page.read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in html_text and "&lt;script&gt;" in html_text
    stdout = capsys.readouterr().out
    assert "EMPTY explanation" in stdout and "fve not reported" in stdout
    assert f"best of {DEFAULT_BEST_OF}" in stdout and len(rows[0]["samples"]) == DEFAULT_BEST_OF
    assert (
        main(
            [
                "explain",
                text,
                "--av",
                ckpt["av"],
                "--ar",
                ckpt["ar"],
                "--positions",
                "-1",
                "--max-new-tokens",
                "2",
                "--best-of",
                "1",
                "--jsonl",
                str(out),
            ]
        )
        == 0
    )
    assert "best of" not in capsys.readouterr().out and len(json.loads(out.read_text())["samples"]) == 1
    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    assert f"Default: {DEFAULT_BEST_OF} with an AR" in " ".join(capsys.readouterr().out.split())


def test_cli_chat_file(ckpt: dict, tmp_path) -> None:
    from nla.cli import main

    chat = tmp_path / "chat.jsonl"
    chat.write_text('{"role": "user", "content": "hi"}\n{"role": "assistant", "content": "four."}\n')
    out = tmp_path / "c.jsonl"
    rc = main(
        [
            "explain",
            "--chat",
            str(chat),
            "--av",
            ckpt["av"],
            "--positions",
            "assistant",
            "--max-new-tokens",
            "2",
            "--jsonl",
            str(out),
        ]
    )
    assert rc == 0
    assert "".join(json.loads(x)["token"] for x in out.read_text().splitlines()) == "four."


@pytest.mark.parametrize(
    "argv_tail, match",
    [
        (["--positions", "5:2"], "selects no tokens"),
        (["--positions", "99"], "out of range"),
    ],
)
def test_cli_bad_positions_exit_2(ckpt: dict, capsys: pytest.CaptureFixture, argv_tail: list, match: str) -> None:
    from nla.cli import main

    rc = main(["explain", TEXT, "--av", ckpt["av"], "--max-new-tokens", "2", *argv_tail])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("nla: error:") and match in err[0]


def test_cli_without_default_nla(monkeypatch: pytest.MonkeyPatch, tmp_path, capsys: pytest.CaptureFixture) -> None:
    import nla.models.target
    from nla.cli import main

    monkeypatch.setattr(nla.models.target, "default_nla_dir", lambda: tmp_path / "none")
    assert main(["explain", "hello"]) == 2
    assert "nla train pipeline" in capsys.readouterr().err


def test_cli_explain_vector(ckpt: dict, tmp_path, capsys: pytest.CaptureFixture) -> None:
    from safetensors.numpy import save_file

    from nla.cli import main

    save_file(
        {"W_dec": np.random.default_rng(1).normal(size=(3, 64)).astype(np.float32)}, str(tmp_path / "f.safetensors")
    )
    out = tmp_path / "v.jsonl"
    rc = main(
        [
            "explain-vector",
            str(tmp_path / "f.safetensors"),
            "--key",
            "W_dec",
            "--av",
            ckpt["av"],
            "--ar",
            ckpt["ar"],
            "--max-new-tokens",
            "2",
            "--jsonl",
            str(out),
        ]
    )
    assert rc == 0 and len(out.read_text().splitlines()) == 3
    np.save(tmp_path / "z.npy", np.zeros(64, dtype=np.float32))
    assert main(["explain-vector", str(tmp_path / "z.npy"), "--av", ckpt["av"]]) == 2
    assert "zero" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_explain_last_token(smollm2) -> None:
    from nla.models.ar import ActivationReconstructor
    from nla.models.av import ActivationVerbalizer

    av = ActivationVerbalizer.from_target(smollm2, injection_scale=250.0, layer=20)
    ar = ActivationReconstructor.from_target(smollm2, 20)
    recs = NLA(av, ar, smollm2).explain("The Eiffel Tower is in Paris.", "last,-3", max_new_tokens=12)
    assert [r.position for r in recs][-1] == len(smollm2.tokenizer("The Eiffel Tower is in Paris.").input_ids) - 1
    assert all(math.isfinite(r.cosine) and r.raw for r in recs)
