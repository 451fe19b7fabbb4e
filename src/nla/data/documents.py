"""The document: the unit of data an NLA extracts activations from (plain text or a chat), and its JSONL
record. Corpora (:mod:`nla.data.corpus`) are lists of them."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nla.common.errors import NLAError
from nla.common.paths import atomic_write_text


@dataclass(frozen=True)
class Document:
    doc_id: str  # stable id, unique within a corpus
    text: str | None = None  # plain text document
    messages: tuple[dict[str, str], ...] | None = None  # chat transcript: ({"role", "content"}, ...)
    source: str = ""  # where it came from (e.g. "default/web", "file:notes.txt")
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def kind(self) -> str:
        return "chat" if self.messages is not None else "text"

    def __post_init__(self) -> None:
        if (self.text is None) == (self.messages is None):
            raise ValueError(f"document {self.doc_id!r} needs exactly one of text or messages")


def document_to_json(doc: Document) -> dict[str, Any]:
    """The JSONL record of a document (what :func:`load_corpus` reads back)."""
    rec: dict[str, Any] = {"id": doc.doc_id}
    if doc.messages is not None:
        rec["messages"] = [dict(m) for m in doc.messages]
    else:
        rec["text"] = doc.text
    if doc.source:
        rec["source"] = doc.source
    if doc.meta:
        rec["meta"] = doc.meta
    return rec


def write_jsonl(docs: Iterable[Document], path: Path) -> Path:
    """Write documents as JSONL, atomically (the file is complete or absent)."""
    lines = [json.dumps(document_to_json(d), ensure_ascii=False) for d in docs]
    atomic_write_text(Path(path), "".join(line + "\n" for line in lines))
    return Path(path)


def document_from_record(rec: Any, default_id: str, where: str, default_source: str) -> Document:
    """Build a document from a JSON/parquet/HF record; ``where`` names it in error messages."""
    if not isinstance(rec, dict):
        raise NLAError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    doc_id = rec.get("id", rec.get("doc_id"))
    doc_id = default_id if doc_id is None else str(doc_id)
    source = rec.get("source") if isinstance(rec.get("source"), str) else default_source
    meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
    text = rec.get("text")
    if isinstance(text, str):
        if not text.strip():
            raise NLAError(f"{where}: empty text")
        return Document(doc_id=doc_id, text=text, source=source, meta=meta)
    raw = rec.get("messages", rec.get("conversation"))
    if isinstance(raw, (list, tuple)) and raw:
        msgs = []
        for m in raw:
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise NLAError(f"{where}: every message needs string 'role' and 'content' fields")
            msgs.append({"role": m["role"], "content": m["content"]})
        return Document(doc_id=doc_id, messages=tuple(msgs), source=source, meta=meta)
    raise NLAError(f"{where}: needs a non-empty 'text' string or a 'messages' list of {{role, content}}")
