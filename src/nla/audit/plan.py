"""What an audit reads and which tokens it explains: tolerant input reading and per-document positions.

:func:`read_documents` reads DATA (JSONL of ``text`` or chat ``messages``, parquet, a folder of .txt,
``hf:NAME``; see :func:`nla.data.corpus.load_corpus`; ``sample-chats``: the 34 varied chats shipped with
nla). For JSONL it is tolerant: a malformed line (not UTF-8, bad JSON, no text/messages, empty text, a
repeated id) is counted, reported with its reason, and the rest is audited.

:func:`select_positions` resolves the position options against one tokenised document: ``auto`` (every
assistant token of a chat, every token of plain text), any ``--positions`` spec of :mod:`nla.explain.positions`,
then every k-th (``every``) and a random sample of at most ``sample`` per document, seeded by the document
id so a rerun picks the same tokens. :func:`token_rows` gives each picked token its character offsets in
the rendered text, its role and turn (chats), and the context tail before it. :func:`pick_positions`
does the same but leaves out (and describes) each item a document cannot satisfy, e.g. index 40 of a
chat of 30 tokens, so one short document does not stop an audit.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nla.audit.config import SAMPLE_CHATS
from nla.common.errors import NLAError
from nla.data.corpus import load_corpus
from nla.data.documents import Document, document_from_record
from nla.explain.inputs import Encoded
from nla.explain.positions import parse_positions
from nla.resources import resource

CONTEXT_CHARS = 160  # characters of context kept before (and including) each token


@dataclass
class ReadReport:
    """What reading DATA skipped: malformed lines, each ``(where, kind, why)`` (the first few also as
    example strings). ``kind`` is one of ``SKIP_KINDS``."""

    malformed: int = 0
    examples: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, where: str, why: str, kind: str = "schema") -> None:
        self.malformed += 1
        self.skipped.append((where, kind, why))
        if len(self.examples) < 5:
            self.examples.append(f"{where}: {why}")


# why a line, a document or some of its positions were skipped (stored in the DB's ``skips`` table)
SKIP_KINDS = ("not_utf8", "not_json", "schema", "duplicate_id", "positions", "too_long")


def read_documents(data: str, *, limit: int | None = None) -> tuple[list[Document], ReadReport]:
    """The documents of ``data`` (at most ``limit``) and what was skipped; no document at all is an error."""
    report = ReadReport()
    if str(data) == SAMPLE_CHATS and not Path(SAMPLE_CHATS).exists():
        data = str(resource("audit", "sample_chats.jsonl"))
    path = Path(str(data)).expanduser()
    if path.suffix.lower() != ".jsonl" or not path.is_file():
        return load_corpus(str(data), limit=limit), report
    docs: list[Document] = []
    seen: set[str] = set()
    for n, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if limit is not None and len(docs) >= limit:
            break
        where = f"{path.name} line {n}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            report.add(where, f"not UTF-8 (undecodable byte 0x{raw[e.start]:02x} at column {e.start + 1})", "not_utf8")
            continue
        if not line.strip():
            continue
        try:
            doc = document_from_record(json.loads(line), f"{path.name}:{n}", where, f"file:{path.name}")
        except json.JSONDecodeError as e:
            report.add(where, f"not valid JSON ({e.msg})", "not_json")
            continue
        except NLAError as e:
            report.add(where, str(e).removeprefix(f"{where}: "))
            continue
        if doc.doc_id in seen:
            report.add(where, f"repeats document id {doc.doc_id!r}", "duplicate_id")
            continue
        seen.add(doc.doc_id)
        docs.append(doc)
    if not docs:
        raise NLAError(f"{path} holds no readable document ({report.malformed} malformed lines)")
    return docs, report


def content_of(doc: Document) -> str | list[dict[str, str]]:
    """What :meth:`nla.explain.api.NLA.encode` takes: the text, or the list of messages."""
    return doc.text if doc.text is not None else [dict(m) for m in doc.messages or ()]


def content_hash(doc: Document) -> str:
    return hashlib.sha256(json.dumps(content_of(doc), sort_keys=True).encode("utf-8")).hexdigest()


def select_positions(
    doc: Document, enc: Encoded, positions: str = "auto", *, every: int = 1, sample: int | None = None, seed: int = 0
) -> list[int]:
    """Token indices of ``doc`` to explain (sorted); empty when the spec selects nothing in it (e.g. a chat
    without an assistant turn under ``auto``). A spec item this document cannot satisfy is an error
    (:func:`pick_positions` skips it instead)."""
    picked, problems = pick_positions(doc, enc, positions, every=every, sample=sample, seed=seed)
    if problems:
        raise NLAError(problems[0])
    return picked


def pick_positions(
    doc: Document,
    enc: Encoded,
    positions: str = "auto",
    *,
    every: int = 1,
    sample: int | None = None,
    seed: int = 0,
    limit: int | None = None,
) -> tuple[list[int], list[str]]:
    """Like :func:`select_positions`, but each comma-separated item of ``positions`` that this document
    cannot satisfy (an index past its end, a range that selects nothing here, ``text`` on an input
    without such tokens) is left out and described in the second list: an audit skips it, not the run.
    Positions at or past ``limit`` (the context window) are dropped before ``every`` and ``sample``."""
    if every < 1 or (sample is not None and sample < 1):
        raise NLAError("--every and --sample must be >= 1")
    spec = positions.strip().lower()
    problems: list[str] = []
    if spec == "auto":
        if doc.messages is None:
            picked = list(range(len(enc.input_ids)))
        else:
            picked = [i for i, m in enumerate(enc.assistant_mask or []) if m]
    else:
        found: set[int] = set()
        for item in (s.strip() for s in spec.split(",")):
            if not item:
                continue
            try:
                found.update(parse_positions(item, len(enc.input_ids), assistant_mask=enc.assistant_mask))
            except NLAError as e:
                if not (item == "assistant" and doc.messages is not None):  # a chat without an answer: nothing
                    problems.append(str(e))
        picked = sorted(found)
    picked = [i for i in picked if limit is None or i < limit][::every]
    return sample_positions(picked, doc, sample, seed), problems


def sample_positions(picked: list[int], doc: Document, sample: int | None, seed: int) -> list[int]:
    """At most ``sample`` of ``picked``, seeded by the document id (a rerun picks the same tokens)."""
    if sample is None or len(picked) <= sample:
        return picked
    return sorted(random.Random(f"{seed}:{doc.doc_id}").sample(picked, sample))


def message_spans(rendered: str, messages: Sequence[dict[str, str]]) -> list[tuple[int, int, int, str]]:
    """``(start, end, turn, role)`` of each message's content in the rendered chat, searched in order."""
    spans, cursor = [], 0
    for turn, m in enumerate(messages):
        content = str(m.get("content", "")).strip()
        start = rendered.find(content, cursor) if content else -1
        if start < 0:
            continue
        spans.append((start, start + len(content), turn, str(m.get("role", ""))))
        cursor = start + len(content)
    return spans


def token_rows(doc: Document, enc: Encoded, picked: Sequence[int]) -> tuple[str, list[dict[str, Any]]]:
    """The rendered text (the tokens' texts joined) and one row per picked token: ``idx, token, start,
    end, role, turn, context``. Role is the message's role, ``template`` for chat decorations, ``text``
    for plain text."""
    rendered = "".join(enc.tokens)
    ends, total = [], 0
    for t in enc.tokens:
        total += len(t)
        ends.append(total)
    spans = message_spans(rendered, doc.messages) if doc.messages is not None else []
    rows = []
    for i in picked:
        end = ends[i]
        start = end - len(enc.tokens[i])
        role, turn = ("text", None) if doc.messages is None else ("template", None)
        for s, e, t, r in spans:
            if start < e and s < end:
                role, turn = r, t
                break
        context = rendered[max(0, end - CONTEXT_CHARS) : end]
        rows.append(dict(idx=i, token=enc.tokens[i], start=start, end=end, role=role, turn=turn, context=context))
    return rendered, rows


__all__ = [
    "SKIP_KINDS",
    "ReadReport",
    "content_hash",
    "content_of",
    "pick_positions",
    "read_documents",
    "select_positions",
    "token_rows",
]
