"""Documents: the unit of data an NLA extracts activations from.

A :class:`Document` is either plain text (web prose) or a chat transcript (``messages``). ``doc_id`` is
stable across runs and machines; splits and resume are keyed by it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
