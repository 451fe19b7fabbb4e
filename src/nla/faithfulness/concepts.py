"""Concept sets: labelled prompts and keyword lists, and the keyword rule that says an explanation names a concept.

A concept set holds shared ``neutral`` prompts and, per concept, ``prompts`` (the direction is built from
them), ``heldout`` prompts (probe AUC and topic recall only) and ``keywords``. The set shipped with the
package is ``nla/resources/concepts/default.yaml`` (10 concepts); users bring their own as YAML (the same
layout) or JSONL (one concept object per line; a line with ``"name": "neutral"`` gives neutral prompts)::

    {"name": "eval_awareness", "keywords": ["test", "evaluation", "benchmark"], "prompts": [...], "heldout": [...]}

Without ``heldout`` the last third of ``prompts`` is held out; without neutral prompts the shipped ones are
used. A keyword is a word or phrase matched case-insensitively at word boundaries; a trailing ``*`` matches
any word that starts with it (``cook*``). Explanations are matched after their escaped newlines and tabs
(``\\n``, as the AV writes them inside quotes) become spaces, so ``"...\\nThe"`` still matches ``the``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from nla.common.errors import NLAError
from nla.resources import resource

MIN_PROMPTS, MIN_HELDOUT = 4, 2  # per concept, after the split
_QUOTED = re.compile(r'"[^"\n]*"')


@dataclass(frozen=True)
class Concept:
    name: str
    keywords: tuple[str, ...]
    prompts: tuple[str, ...]  # build the direction
    heldout: tuple[str, ...]  # probe AUC and topic recall
    split: str = ""  # "covered" / "novel" in the shipped set (reported apart); "" = a user's concept

    @cached_property
    def pattern(self) -> re.Pattern[str]:
        return keyword_pattern(self.keywords)

    def mentions(self, explanation: str) -> list[re.Match[str]]:
        """Every keyword match in ``explanation`` (see :func:`matchable`)."""
        return list(self.pattern.finditer(matchable(explanation)))

    def named_in(self, explanation: str | None) -> bool:
        return bool(explanation) and self.pattern.search(matchable(explanation)) is not None


@dataclass(frozen=True)
class ConceptSet:
    name: str
    concepts: tuple[Concept, ...]
    neutral: tuple[str, ...]  # direction baseline
    neutral_heldout: tuple[str, ...]  # probe AUC negatives and the bases that directions are planted into
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.concepts]

    def named(self, explanation: str | None) -> list[str]:
        """The concepts ``explanation`` names, in set order."""
        return [c.name for c in self.concepts if c.named_in(explanation)]

    def subset(self, names: list[str] | None = None, *, n_concepts: int | None = None) -> ConceptSet:
        """Only the given concepts (by name, in that order), or the first ``n_concepts``."""
        if names:
            by_name = {c.name: c for c in self.concepts}
            unknown = [n for n in names if n not in by_name]
            if unknown:
                raise NLAError(f"unknown concept(s) {unknown}; this set has {', '.join(self.names)}")
            chosen = tuple(by_name[n] for n in names)
        else:
            chosen = self.concepts[: n_concepts or len(self.concepts)]
        return ConceptSet(self.name, chosen, self.neutral, self.neutral_heldout, self.source, self.extra)


def keyword_pattern(keywords: tuple[str, ...] | list[str]) -> re.Pattern[str]:
    """One case-insensitive regex for a keyword list: whole words or phrases; ``word*`` = any word starting so."""
    parts = []
    for k in keywords:
        k = " ".join(str(k).split())
        if not k or k == "*":
            continue
        if k.endswith("*"):
            parts.append(re.escape(k[:-1]) + r"\w*")
        else:
            parts.append(re.escape(k).replace(r"\ ", r"\s+"))
    if not parts:
        raise NLAError("a concept needs at least one keyword")
    parts.sort(key=len, reverse=True)  # longest first, so "de la" wins over "de"
    return re.compile(r"(?<!\w)(?:" + "|".join(parts) + r")(?!\w)", re.IGNORECASE)


def matchable(explanation: str) -> str:
    """The explanation with escaped newlines/tabs (``\\n``) as spaces; same length as the input."""
    return re.sub(r"\\[ntr]", "  ", explanation)


_LABEL = re.compile(r"(?:^|(?<=[.;]\s))([A-Z][A-Za-z' ]{0,30}):", re.MULTILINE)


def match_sites(explanation: str, concept: Concept) -> list[tuple[str, bool]]:
    """Where ``concept`` is named: ``(part label, inside a double-quoted span)`` per keyword match.

    The part label is the nearest ``Label:`` before the match on its line (outside quotes), lower-cased:
    "final token", "next", "before it", "setting" in the shipped style; ``line N`` where there is none."""
    text = matchable(explanation)
    quoted = [(m.start(), m.end()) for m in _QUOTED.finditer(text)]

    def in_quote(i: int) -> bool:
        return any(a <= i < b for a, b in quoted)

    labels = [(m.start(), m.group(1).strip().lower()) for m in _LABEL.finditer(text) if not in_quote(m.start())]
    starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    out = []
    for m in concept.pattern.finditer(text):
        line_no = max(i for i, s in enumerate(starts) if s <= m.start())
        here = [name for pos, name in labels if starts[line_no] <= pos <= m.start()]
        out.append((here[-1] if here else f"line {line_no + 1}", in_quote(m.start())))
    return out


# ----------------------------------------------------------------------------------------- loading


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, list):
        raise NLAError(f"{what} must be a list of strings")
    out = tuple(" ".join(str(v).split()) if what.endswith("keywords") else str(v).strip() for v in value)
    if any(not s for s in out):
        raise NLAError(f"{what} has an empty entry")
    return out


def _concept(obj: Any, where: str, split: str = "") -> Concept:
    if not isinstance(obj, dict) or not obj.get("name"):
        raise NLAError(f"{where}: each concept needs a name, keywords and prompts")
    name = str(obj["name"]).strip()
    unknown = set(obj) - {"name", "keywords", "prompts", "heldout", "description", "split"}
    if unknown:
        raise NLAError(f"{where}: concept {name!r} has unknown field(s) {sorted(unknown)}")
    keywords = _strings(obj.get("keywords"), f"{where}: {name} keywords")
    prompts = _strings(obj.get("prompts"), f"{where}: {name} prompts")
    heldout = _strings(obj.get("heldout"), f"{where}: {name} heldout")
    if not keywords:
        raise NLAError(f"{where}: concept {name!r} has no keywords")
    if not heldout:
        cut = len(prompts) - len(prompts) // 3
        prompts, heldout = prompts[:cut], prompts[cut:]
    if len(prompts) < MIN_PROMPTS or len(heldout) < MIN_HELDOUT:
        raise NLAError(
            f"{where}: concept {name!r} needs at least {MIN_PROMPTS} prompts and {MIN_HELDOUT} held-out prompts "
            f"(has {len(prompts)} and {len(heldout)})"
        )
    concept = Concept(name, keywords, prompts, heldout, str(obj.get("split") or split).strip())
    concept.pattern  # noqa: B018 (compile now: a bad keyword list fails at load, not mid-run)
    return concept


def _from_objects(objs: list[Any], where: str, split: str = "") -> tuple[list[Concept], dict[str, Any] | None]:
    concepts, neutral = [], None
    for obj in objs:
        if isinstance(obj, dict) and str(obj.get("name", "")).strip().lower() == "neutral":
            neutral = obj
        else:
            concepts.append(_concept(obj, where, split))
    return concepts, neutral


def parse_concepts(data: Any, source: str = "<memory>") -> ConceptSet:
    """A :class:`ConceptSet` from the YAML layout (a mapping with ``concepts`` and ``neutral``) or a list
    of concept objects (JSONL); neutral prompts default to the shipped ones."""
    if isinstance(data, dict):
        concepts, neutral = _from_objects(list(data.get("concepts") or []), source, str(data.get("split") or ""))
        neutral = data.get("neutral", neutral)
        name = str(data.get("name") or Path(source).stem)
    elif isinstance(data, list):
        concepts, neutral = _from_objects(data, source)
        name = Path(source).stem
    else:
        raise NLAError(f"{source}: expected a mapping with `concepts:` or a list of concept objects")
    if not concepts:
        raise NLAError(f"{source} defines no concepts")
    names = [c.name for c in concepts]
    if len(set(names)) != len(names):
        raise NLAError(f"{source}: concept names must be unique, got {names}")
    if neutral is None:
        if source == SHIPPED:
            raise NLAError("the shipped concept set has no neutral prompts")
        shipped = _covered()
        base, held = shipped.neutral, shipped.neutral_heldout
    else:
        if not isinstance(neutral, dict):
            raise NLAError(f"{source}: neutral must be a mapping with prompts (and heldout)")
        base = _strings(neutral.get("prompts"), f"{source}: neutral prompts")
        held = _strings(neutral.get("heldout"), f"{source}: neutral heldout")
        if not held:
            cut = len(base) - len(base) // 3
            base, held = base[:cut], base[cut:]
        if len(base) < MIN_PROMPTS or len(held) < MIN_HELDOUT:
            raise NLAError(f"{source}: need at least {MIN_PROMPTS} neutral prompts and {MIN_HELDOUT} held out")
    return ConceptSet(name, tuple(concepts), base, held, source)


SHIPPED = "nla/resources/concepts/default.yaml"
NOVEL = "nla/resources/concepts/novel.yaml"
SPLITS = ("covered", "novel")  # the shipped set's splits, in report order


def _shipped(name: str, source: str) -> ConceptSet:
    return parse_concepts(yaml.safe_load(resource("concepts", name).read_text(encoding="utf-8")), source)


def _covered() -> ConceptSet:
    return _shipped("default.yaml", SHIPPED)


def load_concepts(path: str | Path | None = None, *, splits: list[str] | tuple[str, ...] = SPLITS) -> ConceptSet:
    """The shipped concept set (its ``splits``: ``covered``, the concepts of default.yaml, which the teacher's
    taxonomy largely names, and ``novel``, novel.yaml, which no training resource names), or a user's
    YAML / JSONL file (see the module docstring)."""
    if path is None:
        unknown = [s for s in splits if s not in SPLITS]
        if unknown or not splits:
            raise NLAError(f"unknown concept split(s) {unknown}; the shipped set has {', '.join(SPLITS)}")
        covered = _covered()
        parts = {"covered": covered.concepts, "novel": _shipped("novel.yaml", NOVEL).concepts}
        chosen = tuple(c for s in SPLITS if s in splits for c in parts[s])
        source = " + ".join(f for s, f in zip(SPLITS, (SHIPPED, NOVEL), strict=True) if s in splits)
        return ConceptSet("nla-shipped-concepts", chosen, covered.neutral, covered.neutral_heldout, source)
    p = Path(path)
    if not p.is_file():
        raise NLAError(f"concept file not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".jsonl":
            data: Any = [json.loads(line) for line in text.splitlines() if line.strip()]
        elif p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise NLAError(f"cannot parse concept file {p}: {e}") from e
    return parse_concepts(data, str(p))


__all__ = [
    "Concept",
    "ConceptSet",
    "SPLITS",
    "keyword_pattern",
    "load_concepts",
    "match_sites",
    "matchable",
    "parse_concepts",
]
