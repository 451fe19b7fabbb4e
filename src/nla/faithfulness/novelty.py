"""Is a concept really novel? What a concept set shares with the project's training resources.

A *novel* concept is one that no training resource names: none of its keywords is a cue or a topic name of
the teacher's taxonomy (``nla/resources/topics.yaml``), none occurs in a corpus prompt file (the prompt lists
shipped under ``nla/resources``, the supplementary corpora's ``corpora/*.yaml`` included), and none of its prompts is a
training prompt. :func:`overlaps` lists every such contact (empty = novel); the shipped novel split
(``concepts/novel.yaml``) is held to it by a test, and users can hold their own concept files to it::

    from nla.faithfulness.concepts import load_concepts
    from nla.faithfulness.novelty import overlaps
    print(overlaps(load_concepts("my_concepts.yaml")))
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

from nla.faithfulness.concepts import ConceptSet, keyword_pattern
from nla.resources import resource

# text files under nla/resources that feed training (corpus prompts, templates); concepts/ and the NLA are not
_TRAINING_FILES = ("chat_prompts.txt", "prompt_templates.yaml")


@dataclass(frozen=True)
class TrainingText:
    """What the training resources say: the taxonomy's cues and names, and the corpus prompt files' text."""

    cues: dict[str, tuple[str, ...]]  # topic name -> cue words ("cook*" style)
    files: dict[str, str]  # name -> text of each corpus prompt file


def training_text() -> TrainingText:
    """The training resources of this installation: the taxonomy, the main corpus's prompt files and every
    prompt file the supplementary corpora are built from (``nla/resources/corpora``)."""
    spec = yaml.safe_load(resource("topics.yaml").read_text(encoding="utf-8"))
    cues = {str(k): tuple(str(c) for c in v) for k, v in spec["topics"].items()}
    files = {name: resource(name).read_text(encoding="utf-8") for name in _TRAINING_FILES}
    for p in sorted(resource("corpora").iterdir()):
        if p.is_file():
            files[f"corpora/{p.name}"] = p.read_text(encoding="utf-8")
    return TrainingText(cues, files)


def _cue_pattern(cue: str) -> re.Pattern[str]:
    body = re.escape(cue[:-1]) + r"[\w'-]*" if cue.endswith("*") else re.escape(cue)
    return re.compile(r"(?<![\w-])" + body.replace(r"\ ", r"\s+") + r"(?![\w-])", re.IGNORECASE)


def _lines(text: str) -> set[str]:
    return {" ".join(ln.split()).strip(" -\"'").lower() for ln in text.splitlines() if ln.strip()}


def overlaps(concepts: ConceptSet, training: TrainingText | None = None) -> list[str]:
    """Every contact of ``concepts`` with the training resources, one line each (``[]``: all novel).

    Checked per concept: a keyword that a taxonomy cue matches, that matches a cue or a topic name, or that
    occurs in a corpus prompt file; the concept's name as a topic name; a prompt or held-out text that is a
    line of a corpus prompt file."""
    tr = training or training_text()
    cue_pats = [(topic, c, _cue_pattern(c)) for topic, cs in tr.cues.items() for c in cs]
    prompt_lines = {name: _lines(text) for name, text in tr.files.items()}
    found: list[str] = []
    for concept in concepts.concepts:
        if concept.name.replace("_", " ").lower() in {t.lower() for t in tr.cues}:
            found.append(f"{concept.name}: its name is a topic of topics.yaml")
        for kw in concept.keywords:
            words = kw.rstrip("*")
            kw_pat = keyword_pattern([kw])
            for topic, cue, pat in cue_pats:
                if pat.search(words) or kw_pat.search(cue.rstrip("*")):
                    found.append(f"{concept.name}: keyword {kw!r} meets cue {cue!r} of topic {topic!r}")
            for topic in tr.cues:
                if kw_pat.search(topic):
                    found.append(f"{concept.name}: keyword {kw!r} is in the topic name {topic!r}")
            for name, text in tr.files.items():
                m = kw_pat.search(text)
                if m:
                    found.append(f"{concept.name}: keyword {kw!r} occurs in {name} ({m.group(0)!r})")
        for prompt in concept.prompts + concept.heldout:
            key = " ".join(prompt.split()).lower()
            for name, lines in prompt_lines.items():
                if key in lines:
                    found.append(f"{concept.name}: prompt {prompt[:40]!r}... is a line of {name}")
    return found


def shared_keywords(a: ConceptSet, b: ConceptSet) -> list[str]:
    """Keywords of a concept in ``a`` that another concept's keywords in ``b`` match (a wrong-concept rate
    needs concepts that no single word names at once); pairs of one concept with itself are skipped."""
    out = []
    for ca in a.concepts:
        for cb in b.concepts:
            if ca.name == cb.name:
                continue
            for kw in ca.keywords:
                if cb.pattern.fullmatch(kw.rstrip("*")):
                    out.append(f"{ca.name} keyword {kw!r} is also a keyword of {cb.name}")
    return out


__all__ = ["TrainingText", "overlaps", "shared_keywords", "training_text"]
