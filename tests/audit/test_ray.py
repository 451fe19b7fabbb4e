"""The Ray engine on a local 2-CPU Ray with the tiny NLA: the same rows as the single-process run."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from nla.audit.job import audit

from audit_helpers import CHATS, audit_config, write_chats

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'nla[ray]'")


def _rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as c:
        return c.execute(
            "SELECT p.*, e.* FROM positions p JOIN explanations e USING (pos_id) ORDER BY p.pos_id"
        ).fetchall()


def test_ray_engine_writes_the_same_rows(tiny_nla_dirs: dict, tmp_path: Path) -> None:
    import torch

    data = write_chats(tmp_path / "chats.jsonl", CHATS * 2)
    kw = dict(max_new_tokens=6, batch_size=4, best_of=2, temperature=1.0)  # sampled: seeds must match too
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the Ray actor (num_cpus=1)
    try:
        local = audit(str(data), audit_config(tiny_nla_dirs, tmp_path / "local.db", **kw), progress=False)
    finally:
        torch.set_num_threads(threads)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = audit(
            str(data),
            audit_config(tiny_nla_dirs, tmp_path / "ray.db", engine="ray", num_actors=1, **kw),
            progress=False,
        )
    finally:
        ray.shutdown()
    assert remote["engine"] == "ray" and remote["positions"] == local["positions"]
    assert local["positions"]["stored"] > 8
    assert _rows(tmp_path / "ray.db") == _rows(tmp_path / "local.db")
