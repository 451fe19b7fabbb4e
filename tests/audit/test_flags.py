from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from nla.audit.flags import direction_from_prompts, flag_summary, load_rules, run_flags, threshold_at_fpr
from nla.audit.job import audit
from nla.audit.store import Store
from nla.cli import main
from nla.common.errors import NLAError

from audit_helpers import audit_config, scripted_nla


@pytest.fixture(scope="module")
def db(tiny_nla_dirs: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from audit_helpers import CHATS, write_chats

    root = tmp_path_factory.mktemp("flags")
    data = write_chats(root / "chats.jsonl", CHATS)
    out = root / "a.db"
    audit(str(data), audit_config(tiny_nla_dirs, out, positions="all"), nla=scripted_nla(tiny_nla_dirs), progress=False)
    return out


def rules(tmp_path: Path, detectors: list[dict]) -> Path:
    p = tmp_path / "rules.yaml"
    p.write_text(yaml.safe_dump({"detectors": detectors}))
    return p


def stored(db: Path) -> tuple[list[int], list[str], np.ndarray]:
    with Store(db) as s:
        r = s.query("SELECT pos_id, explanation, activation FROM explanations ORDER BY pos_id")
    acts = np.stack([np.frombuffer(x["activation"], dtype="<f4") for x in r])
    return [x["pos_id"] for x in r], [x["explanation"] for x in r], acts


def test_threshold_at_fpr() -> None:
    ref = np.arange(1000, dtype=np.float64)
    thr = threshold_at_fpr(ref, 0.01)
    assert (ref > thr).mean() <= 0.01 and (ref >= thr).mean() >= 0.01


def test_text_and_direction_detectors_and_their_disagreement(db: Path, tmp_path: Path) -> None:
    ids, texts, acts = stored(db)
    direction = np.zeros(acts.shape[1], dtype=np.float32)
    direction[0] = 1.0  # the scripted AV says "secret" where coordinate 0 is the largest of the first 8
    np.save(tmp_path / "secret.npy", direction)
    path = rules(
        tmp_path,
        [
            {"name": "secrecy", "kind": "text", "keywords": ["SECRE"], "regex": [r"\bpassw"]},
            {"name": "secret-dir", "kind": "direction", "npy": "secret.npy", "fpr": 0.2, "pairs_with": "secrecy"},
        ],
    )
    with Store(db) as s:
        summary = run_flags(s, load_rules(path))
    text_hit = np.array(["secret" in t for t in texts])
    unit = acts / np.linalg.norm(acts, axis=1, keepdims=True)
    score = unit @ direction
    thr = np.quantile(score, 0.8, method="higher")  # reference: the run's own positions
    dir_hit = score > thr
    det = {d["name"]: d for d in summary["detectors"]}
    assert det["secrecy"]["flagged"] == text_hit.sum() > 0
    assert det["secret-dir"]["flagged"] == dir_hit.sum() and det["secret-dir"]["threshold"] == pytest.approx(thr)
    assert dir_hit.mean() <= 0.2
    (pair,) = summary["disagreements"]
    assert pair["both"] == (text_hit & dir_hit).sum()
    assert pair["text_only"] == (text_hit & ~dir_hit).sum() and pair["direction_only"] == (~text_hit & dir_hit).sum()
    assert pair["text_only"] + pair["direction_only"] > 0
    per_doc = {d["doc_id"]: d["flags"] for d in summary["documents"]}
    assert sum(f.get("secrecy", 0) for f in per_doc.values()) == text_hit.sum()
    assert sum(f.get("disagreements", 0) for f in per_doc.values()) == pair["text_only"] + pair["direction_only"]
    with Store(db) as s:
        assert flag_summary(s) == summary  # stored, readable later (nla serve reads it)
        again = run_flags(s, load_rules(path))  # rerun replaces, never duplicates
        assert again == summary


def test_min_margin_narrows_a_text_rule(db: Path, tmp_path: Path) -> None:
    any_word = {"name": "any", "kind": "text", "keywords": ["the text"]}
    with Store(db) as s:
        loose = run_flags(s, load_rules(rules(tmp_path, [any_word])))["detectors"][0]["flagged"]
        strict = run_flags(s, load_rules(rules(tmp_path, [{**any_word, "min_margin": 0.0}])))
        margins = [r[0] for r in s.query("SELECT margin FROM explanations")]
    assert loose == len(margins)
    assert strict["detectors"][0]["flagged"] == sum(m >= 0 for m in margins)


def test_direction_from_prompt_sets(tiny_target) -> None:
    pos = ["Paris is the capital of France.", "Berlin is the capital of Germany."]
    neg = ["def add(a, b):\n    return a + b\n", "1234567890 !?.,;:"]
    d = direction_from_prompts(tiny_target, 1, pos, neg)
    assert d.shape == (64,) and np.linalg.norm(d) > 0
    from nla.audit.flags import prompt_activations

    assert (prompt_activations(tiny_target, 1, pos) @ d).mean() > (prompt_activations(tiny_target, 1, neg) @ d).mean()


def test_prompt_set_detector_end_to_end(db: Path, tmp_path: Path, tiny_nla_dirs: dict) -> None:
    (tmp_path / "pos.txt").write_text("Paris is the capital of France.\nBerlin is the capital of Germany.\n")
    path = rules(
        tmp_path,
        [
            {
                "name": "capitals",
                "kind": "direction",
                "positive_file": "pos.txt",
                "negative": ["def add(a, b):"],
                "fpr": 0.1,
            }
        ],
    )
    with Store(db) as s:
        summary = run_flags(s, load_rules(path))  # the target is loaded from the run (the tiny one on disk)
    d = summary["detectors"][0]
    assert d["reference"] == "negative" and d["reference_size"] > 0 and 0 <= d["flagged"]


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"detectors": []}, "non-empty 'detectors:'"),
        ({"detectors": [{"name": "x", "kind": "text"}]}, "keywords or regex"),
        ({"detectors": [{"name": "x", "kind": "text", "regex": ["("]}]}, "bad regex"),
        ({"detectors": [{"name": "x", "kind": "direction", "positive": ["a"]}]}, "either npy"),
        ({"detectors": [{"name": "x", "kind": "direction", "npy": "a.npy", "fpr": 2}]}, "fpr"),
        ({"detectors": [{"name": "x", "kind": "text", "keywords": ["a"], "colour": 1}]}, "unknown key"),
        ({"detectors": [{"name": "x", "kind": "direction", "npy": "a.npy", "pairs_with": "y"}]}, "not a text"),
    ],
)
def test_bad_rules(tmp_path: Path, bad: dict, message: str) -> None:
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(bad))
    with pytest.raises(NLAError, match=message):
        load_rules(p)


def test_cli_flags(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = rules(tmp_path, [{"name": "food", "kind": "text", "keywords": ["cooking"]}])
    assert main(["audit", "flags", "--db", str(db), "--rules", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["detectors"][0]["name"] == "food"
    assert main(["audit", "flags", "--db", str(db)]) == 0  # the stored flags
    assert "food" in capsys.readouterr().out


def test_shipped_sample_rules() -> None:
    from nla.audit.flags import SAMPLE_RULES

    found = {d.name: d for d in load_rules(SAMPLE_RULES)}
    assert found["secrecy-direction"].pairs_with == "secrecy" and found["secrecy-direction"].reference == "db"
    assert found["evaluation-direction"].positive and found["evaluation"].keywords
