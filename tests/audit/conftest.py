"""Shared fixtures of the audit and serve tests: a tiny NLA saved to disk and a few small chats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

LAYER = 1
CHATS = [
    [{"role": "user", "content": "what is two plus two?"}, {"role": "assistant", "content": "four."}],
    [
        {"role": "user", "content": "Where is Paris?"},
        {"role": "assistant", "content": "Paris is the capital of France."},
    ],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "def add(a, b):"},
        {"role": "assistant", "content": "return a + b"},
    ],
    [{"role": "user", "content": "The quick brown fox?"}, {"role": "assistant", "content": "jumps over the lazy dog."}],
]


def save_tiny_nla(root: Path) -> dict[str, str]:
    """A tiny target saved as an HF dir, an untrained AV (copy of it) and an AR (identity head)."""
    from nla.models.ar import ActivationReconstructor
    from nla.models.av import ActivationVerbalizer
    from nla.models.target import load_target

    from helpers import save_tiny_target

    save_tiny_target(root / "target")
    target = load_target(str(root / "target"))
    ActivationVerbalizer.from_target(target, injection_scale=8.0, layer=LAYER).save_pretrained(root / "av")
    ActivationReconstructor.from_target(target, LAYER).save_pretrained(root / "ar")
    ActivationReconstructor.from_target(target, 0).save_pretrained(root / "ar_l0")  # another NLA (layer 0 AR)
    return {"target": str(root / "target"), "av": str(root / "av"), "ar": str(root / "ar")}


def write_chats(path: Path, chats: list, *, start: int = 0) -> Path:
    with path.open("a", encoding="utf-8") as f:
        for i, msgs in enumerate(chats, start=start):
            f.write(json.dumps({"id": f"c{i}", "messages": msgs}) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_nla_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return save_tiny_nla(tmp_path_factory.mktemp("tiny_nla"))


@pytest.fixture
def chats_file(tmp_path: Path) -> Path:
    return write_chats(tmp_path / "chats.jsonl", CHATS)
