"""docs/interop.md cannot rot: every ``nla.*`` name it cites resolves, every ``nla`` command it shows exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from nla.cli import main

DOC = Path(__file__).resolve().parents[2] / "docs" / "interop.md"


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(dotted)


def test_cited_names_resolve() -> None:
    names = set(re.findall(r"`(nla(?:\.[A-Za-z_]\w*)+)`", DOC.read_text(encoding="utf-8")))
    assert len(names) >= 3
    for name in sorted(names):
        assert _resolve(name) is not None, name


def test_shown_commands_exist(capsys) -> None:
    for cmd in ("export", "serve-sglang"):
        try:
            main([cmd, "--help"])
        except SystemExit as e:
            assert e.code == 0
        assert "usage: nla " + cmd in capsys.readouterr().out
