"""``nla explain`` / ``explain-vector`` / the CLI frame: checks before the work, no target for vectors,
progress and the estimate, --threads on every command, one-line usage errors, the context window."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nla.cli import build_parser, leaf_parsers, main
from nla.explain.trust import COS_MARGIN

TEXT = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from nla.models.ar import ActivationReconstructor
    from nla.models.av import ActivationVerbalizer
    from nla.models.target import load_target

    from helpers import save_tiny_target

    root = tmp_path_factory.mktemp("cli_ckpt")
    save_tiny_target(root / "target")
    target = load_target(str(root / "target"))
    ActivationVerbalizer.from_target(target, injection_scale=8.0, layer=1).save_pretrained(root / "av")
    ActivationReconstructor.from_target(target, 1).save_pretrained(root / "ar")
    return {"target": str(root / "target"), "av": str(root / "av"), "ar": str(root / "ar")}


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every model loader call instead of loading (a call means the check came too late)."""
    import nla.explain.api
    import nla.models.target

    build_parser()  # import every command module first, so none keeps a patched loader after this test
    calls: list[str] = []

    def refuse(name: str):
        def loader(*args, **kw):
            calls.append(name)
            raise AssertionError(f"{name} was called")

        return loader

    monkeypatch.setattr(nla.explain.api.NLA, "from_pretrained", classmethod(refuse("NLA.from_pretrained")))
    monkeypatch.setattr(nla.models.target, "load_target", refuse("load_target"))
    monkeypatch.setattr(nla.explain.api, "load_target", refuse("load_target"))
    return calls


def test_unwritable_html_fails_before_any_model_is_loaded(ckpt, loads, tmp_path, capsys) -> None:
    (tmp_path / "a_file").write_text("x")
    for html in ("/proc/nla-test/r.html", str(tmp_path / "a_file" / "r.html"), str(tmp_path)):
        rc = main(["explain", TEXT, "--av", ckpt["av"], "--ar", ckpt["ar"], "--html", html])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith("nla: error:") and "--html" in err[0]
    assert loads == [] and sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_wrong_width_vectors_fail_before_any_model_is_loaded(ckpt, loads, tmp_path, capsys) -> None:
    np.save(tmp_path / "v.npy", np.ones((3, 32), np.float32))
    assert main(["explain-vector", str(tmp_path / "v.npy"), "--av", ckpt["av"]]) == 2
    assert "width 32 but this NLA's d_model is 64" in capsys.readouterr().err and loads == []


def test_explain_vector_never_loads_the_target(ckpt, monkeypatch, tmp_path) -> None:
    import nla.explain.api

    def no_target(*args, **kw):
        raise AssertionError("the target model was loaded to explain vectors")

    monkeypatch.setattr(nla.explain.api, "load_target", no_target)
    np.save(tmp_path / "v.npy", np.random.default_rng(0).normal(size=(2, 64)).astype(np.float32))
    out = tmp_path / "v.jsonl"
    argv = ["explain-vector", str(tmp_path / "v.npy"), "--av", ckpt["av"], "--ar", ckpt["ar"]]
    assert main([*argv, "--max-new-tokens", "2", "--jsonl", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 2 and all(r["control_cosine"] is not None and "beats_control" in r for r in rows)


def test_progress_bar_estimate_line_and_timing_note(ckpt, monkeypatch, capsys) -> None:
    import nla.explain.progress

    monkeypatch.setattr(nla.explain.progress, "WARN_SECONDS", 0.0)  # every run counts as long
    rc = main(["explain", TEXT, "--av", ckpt["av"], "--ar", ckpt["ar"], "--positions", "0:3", "--max-new-tokens", "2"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert "3 positions x 4 candidate(s) = 12 explanations" in err and "--best-of 1 (4x fewer)" in err
    assert "explain 3 positions" in err and "12/12" in err  # the tqdm bar reached its total
    assert "12 explanations in 1 batch took" in out and "estimated" in out  # a batch counts activations
    monkeypatch.setattr(nla.explain.progress, "WARN_SECONDS", 1e9)
    assert main(["explain", TEXT, "--av", ckpt["av"], "--positions", "last", "--max-new-tokens", "2"]) == 0
    assert "to go faster" not in capsys.readouterr().err  # short runs say nothing


def test_table_shows_control_verdict_and_sink(ckpt, capsys) -> None:
    rc = main(["explain", TEXT, "--av", ckpt["av"], "--ar", ckpt["ar"], "--positions", "0,-1", "--best-of", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    header = next(line for line in out.splitlines() if "verdict" in line)
    assert "ctrl" in header and "(sink)" in out and "attention sink" in out
    assert ("worth reading" in out) or ("not worth it" in out)
    assert f"verdict 'worth reading' = at least {COS_MARGIN:.2f} cosine above ctrl" in out  # no baseline: cosine


def test_long_input_max_tokens_and_windows(ckpt, tmp_path, capsys) -> None:
    long = tmp_path / "long.txt"
    long.write_text(" ".join(["the river and the city"] * 400))  # > 512 tiny-target tokens
    base = ["explain", "--file", str(long), "--av", ckpt["av"], "--best-of", "1", "--max-new-tokens", "2"]
    assert main([*base, "--positions", "last"]) == 2
    assert "reads at most 512" in capsys.readouterr().err
    out = tmp_path / "o.jsonl"
    assert main([*base, "--positions", "last", "--max-tokens", "20", "--jsonl", str(out)]) == 0
    assert json.loads(out.read_text())["position"] == 19 and "were cut" in capsys.readouterr().out
    assert main([*base, "--positions", "0:3", "--jsonl", str(out)]) == 0  # a window before the limit is fine
    assert [json.loads(x)["position"] for x in out.read_text().splitlines()] == [0, 1, 2]


def test_every_command_has_threads_and_it_is_applied(ckpt, capsys) -> None:
    parser = build_parser()
    leaves = leaf_parsers(parser)
    assert len(leaves) >= 10 and all("--threads" in p._option_string_actions for p in leaves)
    before = torch.get_num_threads()
    try:
        assert main(["info", "--model", ckpt["target"], "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1 and json.loads(capsys.readouterr().out)["d_model"] == 64
    finally:
        torch.set_num_threads(before)


def test_usage_errors_are_one_line_and_required_input_shows_in_help(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["explain", "--max-new-tokens", "x", TEXT])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "invalid int value" in err[0]
    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    assert "input (required: exactly one)" in capsys.readouterr().out


def test_chat_text_positions_skip_the_template(ckpt, tmp_path) -> None:
    chat = tmp_path / "chat.jsonl"
    chat.write_text('{"role": "user", "content": "hi"}\n\n{"role": "assistant", "content": "four."}\n')
    out, page = tmp_path / "c.jsonl", tmp_path / "c.html"
    argv = ["explain", "--chat", str(chat), "--av", ckpt["av"], "--max-new-tokens", "2", "--best-of", "1"]
    assert main([*argv, "--jsonl", str(out), "--html", str(page)]) == 0
    assert "".join(json.loads(x)["token"] for x in out.read_text().splitlines()) == "hifour."
    html = page.read_text()
    assert 'class="u tpl"' in html and 'id="showtpl"' in html and "Every explanation" in html


def test_an_unexpected_os_error_is_one_line(monkeypatch, ckpt, tmp_path, capsys) -> None:
    import nla.explain.report

    def disk_full(*args, **kw):
        raise OSError(28, "No space left on device", str(tmp_path / "o.jsonl"))

    monkeypatch.setattr(nla.explain.report, "write_jsonl", disk_full)
    argv = ["explain", TEXT, "--av", ckpt["av"], "--positions", "last", "--max-new-tokens", "2"]
    assert main([*argv, "--jsonl", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"nla: error: No space left on device ({tmp_path / 'o.jsonl'})"
    assert "Traceback" not in err
    assert not Path(tmp_path / "o.jsonl").exists()


def test_add_command_marks_required_options_in_help(capsys) -> None:
    from dataclasses import dataclass

    from nla.cli import Parser, add_command
    from nla.common.config import option

    @dataclass
    class Demo:
        data: str = option("", "Training data.")
        lr: float = option(0.1, "Learning rate.")

    parser = Parser(prog="nla")
    sub = parser.add_subparsers()
    add_command(sub, "demo", "A demo.", lambda a: 0, config=Demo, required=("data",))
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Training data. (required)" in text and "Learning rate. (default: 0.1)" in text


def test_eval_shows_a_progress_bar_that_ends_full(ckpt, tmp_path, capsys) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    vecs = np.random.default_rng(0).normal(size=(6, 64)).astype(np.float32)
    pq.write_table(pa.table({"activation_vector": [list(map(float, v)) for v in vecs]}), tmp_path / "h.parquet")
    argv = ["eval", "--data", str(tmp_path / "h.parquet"), "--av", ckpt["av"], "--ar", ckpt["ar"]]
    assert main([*argv, "--rows", "10", "--max-new-tokens", "2", "--out", str(tmp_path / "card.json")]) == 0
    err = capsys.readouterr().err
    assert "eval: generate" in err and "6/6" in err  # 6 rows held out, though --rows asked for 10
    assert json.loads((tmp_path / "card.json").read_text())["rows"] == 6


def test_eval_of_stages_alone_needs_no_other_ar(ckpt, tmp_path) -> None:
    """An earlier NLA scored on new rows: its --stage pair is the only AR the card needs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    vecs = np.random.default_rng(1).normal(size=(4, 64)).astype(np.float32)
    pq.write_table(pa.table({"activation_vector": [list(map(float, v)) for v in vecs]}), tmp_path / "h.parquet")
    argv = ["eval", "--data", str(tmp_path / "h.parquet"), "--stage", f"old={ckpt['av']},{ckpt['ar']}"]
    assert main([*argv, "--best-of", "2", "--max-new-tokens", "2", "--out", str(tmp_path / "card.json")]) == 0
    card = json.loads((tmp_path / "card.json").read_text())
    assert list(card["ladder"])[:2] == ["old", "old best-of-2"] and card["old"]["n"] == 4
    assert main(["eval", "--data", str(tmp_path / "h.parquet")]) == 2  # still refused with no AR at all
