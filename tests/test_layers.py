"""The import rule of ``nla/__init__.py``: a module imports only from its own folder and the layers below."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import nla

PACKAGE = Path(nla.__file__).parent
# lowest first; names in one tuple share a layer but may not import each other
LAYERS: list[tuple[str, ...]] = [
    ("common", "resources"),
    ("core",),
    ("generation",),
    ("models",),
    ("data",),
    ("teach",),
    ("evaluate",),
    ("train",),
    ("export", "verbalize"),
    ("export_official",),
    ("explain",),
    ("faithfulness", "audit"),
    ("pipeline",),
    ("serve",),
    ("cli",),
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def unit_of(module: str) -> str | None:
    """The layer unit of a dotted module name inside nla (its first component), None for ``nla`` itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "nla" else None


def imported_modules(path: Path, module: str) -> list[tuple[int, str]]:
    """Every nla module that ``path`` imports, anywhere in the file (line, dotted name)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            # ``from nla import x`` imports the module nla.x; ``from nla.a import b`` imports from nla.a
            found += [(node.lineno, f"{name}.{a.name}") for a in node.names] if name == "nla" else [(node.lineno, name)]
    return [(line, name) for line, name in found if name == "nla" or name.startswith("nla.")]


def violations(root: Path) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        unit = unit_of(module)
        if unit is None:
            continue  # nla/__init__.py: the lazy public API may name any layer
        if unit not in RANK:
            out.append(f"{module}: {unit!r} is in no layer of the import rule (add it to LAYERS)")
            continue
        for line, name in imported_modules(path, module):
            other = unit_of(name)
            if other is None or other == unit:
                continue
            if other not in RANK or RANK[other] >= RANK[unit]:
                out.append(f"{path.relative_to(root.parent)}:{line}: {unit} imports {name} (layer {other})")
    return out


def test_every_import_goes_down_the_layers() -> None:
    assert violations(PACKAGE) == []


@pytest.mark.parametrize(
    ("where", "line", "culprit"),
    [
        ("core/bad.py", "from nla.models.av import Responses\n", "core imports nla.models.av"),
        ("data/bad.py", "def f():\n    from nla.explain import api\n", "data imports nla.explain"),
        ("models/bad.py", "import nla.train.loop\n", "models imports nla.train.loop"),
        ("nowhere/bad.py", "x = 1\n", "in no layer"),
    ],
)
def test_the_rule_catches_an_upward_import(tmp_path: Path, where: str, line: str, culprit: str) -> None:
    root = tmp_path / "nla"
    for sub in ("core", "models", "data", "nowhere"):
        (root / sub).mkdir(parents=True)
    (root / where).write_text(line)
    found = violations(root)
    assert len(found) == 1 and culprit in found[0]
