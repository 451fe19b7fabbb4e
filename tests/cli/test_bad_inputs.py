"""Every row of docs/bad-inputs.md, asserted: exit 2, one error line with the expected words, no model
weights loaded before the error, nothing written. The cases live in scripts/bad_inputs.py (which writes
the doc), so the doc and these tests cannot drift apart."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bad_inputs", ROOT / "scripts" / "bad_inputs.py")
bad = importlib.util.module_from_spec(_spec)
sys.modules["bad_inputs"] = bad
_spec.loader.exec_module(bad)


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return bad.build_fixtures(tmp_path_factory.mktemp("bad_inputs"))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch):
    """The Hub unreachable whatever the network here: the offline answers are what the cases check."""
    from nla.models.target import hub_offline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_offline.cache_clear()
    yield
    hub_offline.cache_clear()


def test_there_are_at_least_25_cases() -> None:
    assert len(bad.CASES) >= 25 and len({c.what for c in bad.CASES}) == len(bad.CASES)


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.what, marks=[pytest.mark.slow] if c.real else []) for c in bad.CASES]
)
def test_bad_input(case, fx: dict[str, str], offline) -> None:
    if case.real:  # the embedded model's one-time conversion (with its progress bar) is not the case's business
        from nla.models.target import resolve_model_path

        resolve_model_path("smollm2-135m")
    res = bad.run_case(case, fx, Path(fx["ROOT"]))
    lines = res.stderr.strip().splitlines()
    assert res.code == 2, res.stderr
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in res.stderr, res.stderr
    assert case.expect in lines[0]
    assert res.models_loaded == 0  # every check comes before any model weights load
    assert res.written == []  # nothing half-written (nor any leftover)
    if case.real:
        assert res.seconds < 30  # "exits in seconds" (a 20,000-word file): tokenizer and config only


def test_the_model_load_counter_counts(fx: dict[str, str], tmp_path) -> None:
    """The 'no model loaded' column can fail: a good command is counted loading its models."""
    case = bad.Case("good", ("explain", bad.TEXT, "--av", "{AV}", "--best-of", "1", "--max-new-tokens", "2"), "")
    res = bad.run_case(case, fx, tmp_path)
    assert res.code == 0 and res.models_loaded >= 2  # the AV and the target


def test_doc_lists_every_case() -> None:
    doc = (ROOT / "docs" / "bad-inputs.md").read_text(encoding="utf-8")
    rows = [line for line in doc.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == len(bad.CASES)
    for row, case in zip(rows, bad.CASES, strict=True):
        assert case.what.replace("|", "\\|") in row and "| 2 |" in row and case.expect in row.replace("\\|", "|")
