"""Supplementary corpora: the genres the default corpus lacks, built offline from files the package ships.

The default corpus is English chats with a clear subject and software documentation. An AV trained on it
alone names no language but English, calls plain narrative "programming", and learns that prose not about
software has no topic (docs/history.md, rounds 4-7). Four small corpora fill those gaps:

- ``locale``: passages in other languages made of the translated messages installed programs carry
  (:func:`nla.data.prose.locale_passages`);
- ``topics``: chats whose prompts are spread evenly over the teacher's topic taxonomy
  (``resources/corpora/topic_prompts.yaml``), answered by the target model;
- ``topic_prose``: the assistant answers of the ``topics`` chats as plain documents (:func:`chat_answers`);
- ``scenes``: chats that ask for plain narrative about ordinary places and moments
  (``resources/corpora/scene_prompts.yaml``);
- ``lexicon``: chats about everyday nouns drawn from all of WordNet by rules, balanced over WordNet's classes
  (``resources/corpora/lexicon_prompts.yaml``, written by ``scripts/lexicon_prompts.py``): subjects no list of
  the project anticipates, for an AV that must name what a context is about in open vocabulary (issue 35);
- ``lexicon_prose``: the ``lexicon`` chats' answers as plain documents.

``nla corpus build --prompts topics`` / ``--prompts scenes`` / ``--prompts lexicon`` / ``--locale fr de`` /
``--answers-of FILE`` build each one by hand; ``nla train pipeline`` builds them in its ``corpora`` stage
(:func:`build_supplementary`). A corpus's identity is :func:`nla.data.corpus.corpus_sha256` of its
documents, the value ``nla extract`` records in its sidecar (``provenance.corpus_sha256``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from nla.common.errors import NLAError
from nla.data.corpus import load_corpus
from nla.data.documents import Document, write_jsonl
from nla.data.prose import locale_passages
from nla.resources import resource

log = logging.getLogger(__name__)

SUPPLEMENTARY: tuple[str, ...] = ("locale", "topics", "topic_prose", "scenes", "lexicon", "lexicon_prose")
BUNDLED_PROMPTS = {"topics": "topic_prompts.yaml", "scenes": "scene_prompts.yaml", "lexicon": "lexicon_prompts.yaml"}
PROSE_OF = {"topic_prose": "topics", "lexicon_prose": "lexicon"}  # a prose corpus -> the chat corpus it is made of


def prompt_file(name_or_path: str) -> str:
    """A bundled prompt file by name (``topics``, ``scenes``, ``lexicon``) or a path, as a path string."""
    if name_or_path in BUNDLED_PROMPTS:
        return str(resource("corpora", BUNDLED_PROMPTS[name_or_path]))
    return name_or_path


def locale_corpus(languages: list[str], per_language: int) -> list[Document]:
    """Up to ``per_language`` passages of each language; an error when the machine has none at all."""
    docs: list[Document] = []
    for lang in languages:
        found = locale_passages(lang, per_language)
        log.info("locale %s: %d passages", lang, len(found))
        docs += found
    if languages and not docs:
        raise NLAError(f"no installed translations of {', '.join(languages)} found under /usr/share/locale")
    return docs


def chat_answers(docs: list[Document]) -> list[Document]:
    """One plain document per chat holding its assistant answers (no template, system turn or questions)."""
    out = []
    for doc in docs:
        answers = [m["content"].strip() for m in doc.messages or () if m["role"] == "assistant"]
        if text := "\n\n".join(a for a in answers if a):
            out.append(Document(doc_id=f"prose-{doc.doc_id}", text=text, source=f"answers:{doc.source}"))
    if not out:
        raise NLAError("no chat with an assistant answer to turn into prose")
    return out


def build_supplementary(
    name: str,
    out: Path,
    *,
    model: str,
    n_chat: int = 0,
    max_new_tokens: int = 96,
    languages: list[str] | None = None,
    per_language: int = 40,
    chats: Path | None = None,
    target: object | None = None,
) -> Path:
    """Write supplementary corpus ``name`` (one of :data:`SUPPLEMENTARY`) as JSONL at ``out`` and return it.

    ``topics``/``scenes``/``lexicon`` answer ``n_chat`` bundled prompts with ``model`` (or the loaded ``target``;
    resumable: chunks under ``<out>.parts/``); ``topic_prose``/``lexicon_prose`` need ``chats``, the corpus file
    of the chats they are made of (:data:`PROSE_OF`).
    """
    from nla.data.corpus_default import build_default_corpus

    if name == "locale":
        return write_jsonl(locale_corpus(list(languages or []), per_language), out)
    if name in PROSE_OF:
        if chats is None:
            raise NLAError(f"the {name} corpus is made of the {PROSE_OF[name]} corpus's answers: build that first")
        return write_jsonl(chat_answers(load_corpus(str(chats))), out)
    if name in BUNDLED_PROMPTS:
        return build_default_corpus(
            target=target,  # type: ignore[arg-type]
            out=out,
            n_chat=n_chat,
            n_web=0,
            max_new_tokens=max_new_tokens,
            model=model,
            prompts=prompt_file(name),
        )
    raise NLAError(f"unknown supplementary corpus {name!r}; known: {', '.join(SUPPLEMENTARY)}")


__all__ = ["PROSE_OF", "SUPPLEMENTARY", "build_supplementary", "chat_answers", "locale_corpus", "prompt_file"]
