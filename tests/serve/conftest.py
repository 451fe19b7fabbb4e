"""Fixtures of the serve tests: an audit DB of a few chats made with the tiny scripted NLA, and that NLA."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "audit"))  # audit_helpers

from audit_helpers import CHATS, audit_config, save_tiny_nla, scripted_nla, write_chats  # noqa: E402


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``{"db", "nla", "dirs"}``: an audit DB (every token of 4 chats) and the NLA that made it."""
    from nla.audit.job import audit

    root = tmp_path_factory.mktemp("served")
    dirs = save_tiny_nla(root)
    nla = scripted_nla(dirs)
    data = write_chats(root / "chats.jsonl", CHATS)
    audit(str(data), audit_config(dirs, root / "a.db", positions="all"), nla=nla, progress=False)
    return {"db": root / "a.db", "nla": nla, "dirs": dirs}
