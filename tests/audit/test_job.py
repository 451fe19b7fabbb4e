from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import nla
from nla.audit.job import audit
from nla.audit.store import Store
from nla.common.errors import NLAError
from nla.explain.api import NLA

from audit_helpers import CHATS, audit_config, write_chats

ROWS = (
    "SELECT d.doc_id, p.pos_id, p.idx, p.token, p.role, p.turn, p.batch, e.explanation, e.raw, e.cosine, "
    "e.mse_nrm, e.control_cosine, e.margin, e.samples, e.activation "
    "FROM positions p JOIN documents d USING (doc_key) JOIN explanations e USING (pos_id) ORDER BY p.pos_id"
)


def rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as c:
        return c.execute(ROWS).fetchall()


@pytest.fixture(scope="module")
def tiny(tiny_nla_dirs: dict) -> NLA:
    return NLA.from_pretrained(tiny_nla_dirs["av"], tiny_nla_dirs["ar"])


def test_audit_stores_what_explain_says(tiny_nla_dirs: dict, tiny: NLA, chats_file: Path, tmp_path: Path) -> None:
    summary = audit(str(chats_file), audit_config(tiny_nla_dirs, tmp_path / "a.db"), progress=False)
    got = rows(tmp_path / "a.db")
    assert summary["positions"] == {"explained_now": len(got), "stored": len(got)}
    assert summary["documents"]["new"] == len(CHATS) and {r[4] for r in got} == {"assistant"}
    for i, chat in enumerate(CHATS):  # batched across documents == one text at a time
        mine = [r for r in got if r[0] == f"c{i}"]
        single = tiny.explain(chat, [r[2] for r in mine], max_new_tokens=6, best_of=1)
        acts = tiny.activations(tiny.encode(chat).input_ids)
        for r, s in zip(mine, single, strict=True):
            assert (r[3], r[8]) == (s.token, s.raw)
            assert r[9] == pytest.approx(s.cosine, abs=1e-5) and r[11] == pytest.approx(s.control_cosine, abs=1e-5)
            assert r[12] == pytest.approx(r[9] - r[11], abs=1e-9)
            np.testing.assert_allclose(np.frombuffer(r[14], dtype="<f4"), acts[r[2]].numpy(), rtol=1e-5, atol=1e-5)
    with sqlite3.connect(tmp_path / "a.db") as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.execute("SELECT COUNT(*) FROM explanations_fts").fetchone()[0] == len(got)


def test_growing_jsonl_audits_only_new_documents(
    tiny: NLA, tiny_nla_dirs: dict, chats_file: Path, tmp_path: Path
) -> None:
    cfg = audit_config(tiny_nla_dirs, tmp_path / "a.db")
    audit(str(chats_file), cfg, nla=tiny, progress=False)
    before = rows(tmp_path / "a.db")
    with chats_file.open("a") as f:
        f.write("{a torn line\n")
    write_chats(chats_file, CHATS[:2], start=len(CHATS))  # the log grows by two chats
    s = audit(str(chats_file), cfg, nla=tiny, progress=False)
    after = rows(tmp_path / "a.db")
    assert s["documents"]["new"] == 2 and s["documents"]["already_audited"] == len(CHATS)
    assert s["documents"]["malformed_lines"] == 1
    assert after[: len(before)] == before  # old rows untouched
    assert {r[0] for r in after[len(before) :]} == {f"c{len(CHATS)}", f"c{len(CHATS) + 1}"}
    assert audit(str(chats_file), cfg, nla=tiny, progress=False)["positions"]["explained_now"] == 0


def test_another_nla_or_other_options_need_a_new_run(
    tiny: NLA, tiny_nla_dirs: dict, chats_file: Path, tmp_path: Path
) -> None:
    db = tmp_path / "a.db"
    audit(str(chats_file), audit_config(tiny_nla_dirs, db), nla=tiny, progress=False)
    other = {**tiny_nla_dirs, "ar": str(Path(tiny_nla_dirs["ar"]).parent / "ar_l0")}
    with pytest.raises(NLAError, match="another NLA.*--new-run"):
        audit(str(chats_file), audit_config(other, db), progress=False)
    with pytest.raises(NLAError, match="max_new_tokens=6.*--new-run"):
        audit(str(chats_file), audit_config(tiny_nla_dirs, db, max_new_tokens=7), progress=False)
    with pytest.raises(NLAError, match="best_of=1, min_support=1.*--new-run"):  # best-of: claims filtered by support
        audit(str(chats_file), audit_config(tiny_nla_dirs, db, best_of=2), progress=False)
    greedy_again = audit(str(chats_file), audit_config(tiny_nla_dirs, db, min_support=3), nla=tiny, progress=False)
    assert greedy_again["positions"]["explained_now"] == 0  # greedy decoding: min_support changes nothing
    n = len(rows(db))
    s = audit(
        str(chats_file), audit_config(tiny_nla_dirs, db, max_new_tokens=7, new_run=True), nla=tiny, progress=False
    )
    assert s["run"] == 2 and s["positions"]["stored"] == n and len(rows(db)) == 2 * n


def test_changed_document_is_refused(tiny: NLA, tiny_nla_dirs: dict, chats_file: Path, tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    audit(str(chats_file), audit_config(tiny_nla_dirs, db), nla=tiny, progress=False)
    changed = tmp_path / "changed.jsonl"
    changed.write_text(chats_file.read_text().replace("four.", "five."))
    with pytest.raises(NLAError, match="'c0' changed"):
        audit(str(changed), audit_config(tiny_nla_dirs, db), progress=False)


def test_locked_database_and_second_writer(tiny: NLA, tiny_nla_dirs: dict, chats_file: Path, tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    with Store(db, create=True) as s:
        s.lock_writer()
        with pytest.raises(NLAError, match="another `nla audit` is writing"):
            audit(str(chats_file), audit_config(tiny_nla_dirs, db), progress=False)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(NLAError, match="locked by another process"):
            audit(str(chats_file), audit_config(tiny_nla_dirs, db, timeout=0.2), progress=False)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert audit(str(chats_file), audit_config(tiny_nla_dirs, db), nla=tiny, progress=False)["positions"]["stored"] > 0


def _cli(data: Path, db: Path, dirs: dict) -> list[str]:
    return [
        sys.executable, "-m", "nla.cli", "audit", str(data), "--out", str(db), "--av", dirs["av"], "--ar", dirs["ar"],
        "--max-new-tokens", "8", "--batch-size", "2", "--best-of", "2", "--temperature", "1.0",
    ]  # fmt: skip


def test_sigkill_and_rerun_loses_and_repeats_nothing(tiny: NLA, tiny_nla_dirs: dict, tmp_path: Path) -> None:
    """Kill -9 a sampled (best-of-2) audit mid-way, rerun it: the rows equal those of an uninterrupted run."""
    data = write_chats(tmp_path / "log.jsonl", CHATS * 3)
    env = {**os.environ, "PYTHONPATH": str(Path(nla.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the CLI runs below, so that the numbers can be compared exactly
    try:
        cfg = audit_config(
            tiny_nla_dirs, tmp_path / "ref.db", max_new_tokens=8, batch_size=2, best_of=2, temperature=1.0
        )
        audit(str(data), cfg, nla=tiny, progress=False)
    finally:
        torch.set_num_threads(threads)
    ref = rows(tmp_path / "ref.db")
    killed = tmp_path / "killed.db"
    proc = subprocess.Popen(
        _cli(data, killed, tiny_nla_dirs), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline, done = time.time() + 120, 0
        while time.time() < deadline and proc.poll() is None:
            if killed.exists():
                try:
                    with sqlite3.connect(killed, timeout=0.05) as c:
                        done = c.execute("SELECT COUNT(*) FROM explanations").fetchone()[0]
                except sqlite3.OperationalError:
                    done = 0
                if done >= 6:
                    break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    partial = rows(killed)
    assert 0 < len(partial) < len(ref), "the job must be killed mid-way for this test to mean anything"
    assert len(partial) % 2 == 0  # whole batches only
    subprocess.run(_cli(data, killed, tiny_nla_dirs), env=env, check=True, capture_output=True)
    assert rows(killed) == ref  # nothing lost, nothing repeated, the same explanations and scores
    with sqlite3.connect(killed) as c:
        assert c.execute("SELECT COUNT(*) FROM explanations_fts").fetchone()[0] == len(ref)


def test_without_av_the_nla_shipped_for_the_target_is_audited(
    tiny_nla_dirs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import nla.models.target
    from nla.audit.job import AuditConfig, nla_identity

    monkeypatch.setattr(nla.models.target, "shipped_nla_dir", lambda name: tmp_path / "nla" / name)
    cfg = AuditConfig(out=str(tmp_path / "a.db"), target="gemma3-270m")
    with pytest.raises(NLAError, match="no NLA is shipped for gemma3-270m"):
        nla_identity(cfg)
    for role in ("av", "ar"):
        shutil.copytree(tiny_nla_dirs[role], tmp_path / "nla" / "gemma3-270m" / role)
    _, desc = nla_identity(cfg)
    assert desc["av"] == str((tmp_path / "nla" / "gemma3-270m" / "av").resolve()) and desc["ar"].endswith("ar")
