"""Helpers of the audit and serve tests: a tiny NLA saved to disk, a scripted AV, a few small chats."""

from __future__ import annotations

import json
from pathlib import Path

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


WORDS = ["secret", "evaluation", "cooking", "paris", "deception", "arithmetic", "weather", "code"]


def scripted_nla(dirs: dict[str, str]):
    """The tiny NLA whose AV writes a readable explanation chosen by the vector (the largest of its first
    coordinates picks a word), so search and flags have words to find; the AR round trip is real."""
    from nla.explain.api import NLA

    nla = NLA.from_pretrained(dirs["av"], dirs["ar"])

    def generate(vectors, num_samples=1, **kw):
        out = []
        for v in vectors:
            word = WORDS[int(v[: len(WORDS)].argmax())]
            out.append([f"<explanation>The text is about {word} and its next word.</explanation>"] * num_samples)
        return out

    nla.av.generate = generate
    return nla


def audit_config(dirs: dict[str, str], out, **kw):
    from nla.audit.job import AuditConfig

    base = dict(out=str(out), av=dirs["av"], ar=dirs["ar"], max_new_tokens=6, batch_size=4)
    return AuditConfig(**{**base, **kw})
