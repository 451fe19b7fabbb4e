"""Docs that cannot rot: every Python block of the README and docs/*.md compiles and its imports resolve, every
``nla.…`` module path and ``nla/…`` source path they name exists, their relative links resolve, and the README
stays short."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.S | re.M)
DOTTED = re.compile(r"(?<![\w/.-])nla(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
SOURCE = re.compile(r"(?<![\w/.~-])nla/[A-Za-z0-9_./*-]*[A-Za-z0-9_*]")


def _blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group(1).lower(), m.group(2)) for m in FENCE.finditer(text)]


def _prose(text: str) -> str:
    """The text outside Python blocks (there, ``nla`` is often a variable: the imports are checked instead)."""
    return FENCE.sub(lambda m: "" if m.group(1).lower() in ("python", "py", "pycon") else m.group(0), text)


def resolve(dotted: str) -> bool:
    """Whether ``nla.a.b.c`` names a module, or an attribute of the longest module prefix (or of ``nla.NLA``:
    the docs call an NLA object ``nla``)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
            return True
        except AttributeError:
            break
    from nla import NLA

    return len(parts) == 2 and hasattr(NLA, parts[1])


def _source_exists(path: str) -> bool:
    """Whether ``nla/…`` exists under src/; paths whose first part is no entry of the package (``nla/round4/…``:
    a run folder named nla) are not source paths."""
    base = ROOT / "src"
    top = path.split("/")[1].split(".")[0]
    if not any(p.name.split(".")[0] == top for p in (base / "nla").iterdir()):
        return True
    return any(base.glob(path.rstrip("/"))) if "*" in path else (base / path).exists()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_python_blocks_compile_and_their_imports_resolve(doc: Path) -> None:
    for lang, code in _blocks(doc.read_text(encoding="utf-8")):
        if lang not in ("python", "py"):
            continue
        tree = ast.parse(code, filename=str(doc))  # a SyntaxError fails the test with the block's line
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)
            elif isinstance(node, ast.ImportFrom) and node.module:
                module = importlib.import_module(node.module)
                missing = [a.name for a in node.names if not hasattr(module, a.name)]
                assert not missing, f"{doc.name}: from {node.module} import {missing}: no such name"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_module_and_source_paths_named_in_docs_exist(doc: Path) -> None:
    text = _prose(doc.read_text(encoding="utf-8"))
    rotten = sorted({p for p in DOTTED.findall(text) if not resolve(p)})
    assert not rotten, f"{doc.name} names module paths that do not exist: {rotten}"
    missing = sorted({p for p in SOURCE.findall(text) if not _source_exists(p)})
    assert not missing, f"{doc.name} names source paths that do not exist under src/: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", _prose(doc.read_text(encoding="utf-8")))
    local = [link.split("#")[0] for link in links if not re.match(r"[a-z]+:", link) and link.split("#")[0]]
    missing = sorted({link for link in local if not (doc.parent / link).exists()})
    assert not missing, f"{doc.name} links to files that do not exist: {missing}"


def test_the_checks_can_fail() -> None:
    assert resolve("nla.data.extract.extract") and resolve("nla.cli") and resolve("nla.explain_texts")
    assert not resolve("nla.extract.ExtractConfig") and not resolve("nla.metrics") and not resolve("nla.rerank")
    assert _source_exists("nla/resources/presets") and not _source_exists("nla/data/default_nla")
    assert _source_exists("nla/round4/card.json")  # a run folder, not a source path
    fenced = "```python\nnla.x()\n```\n`nla.y` and\n```bash\npython -m nla.z\n```\n"
    assert DOTTED.findall(_prose(fenced)) == ["nla.y", "nla.z"]
    assert SOURCE.findall("see src/nla/a.py, `nla/b/c.yaml` and runs/nla/round4.") == ["nla/b/c.yaml"]


def test_readme_is_short() -> None:
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 150
