"""Fixtures of the audit tests: a tiny NLA saved to disk once per session, and a few small chats."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # audit_helpers

from audit_helpers import CHATS, save_tiny_nla, write_chats  # noqa: E402


@pytest.fixture(scope="session")
def tiny_nla_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return save_tiny_nla(tmp_path_factory.mktemp("tiny_nla"))


@pytest.fixture
def chats_file(tmp_path: Path) -> Path:
    return write_chats(tmp_path / "chats.jsonl", CHATS)
