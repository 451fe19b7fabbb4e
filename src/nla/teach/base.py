"""Teachers: who writes the warm-start explanations that AR-SFT and AV-SFT learn from (the shared part).

A teacher reads the context of an activation (the text up to AND including its token) and answers
``<explanation>...</explanation>`` holding 2-3 short features a model would use to predict what comes
next; the last feature describes the final token (NLA.md §1). :func:`parse_answer` is strict: no closing
tag or fewer than 2 features means the row is dropped, with a reason that is counted.

**Stored explanation format**: the features, one per line (``"\\n".join(features)``), list markers
("1.", "-", "*", "Feature 1:") removed. ``response`` = the same text wrapped in explanation tags.

Providers, one module each, by name in :mod:`nla.teach.registry` (:func:`make_teacher`): ``anthropic``
(Messages API, ``ANTHROPIC_API_KEY``, base URL from
``--base-url`` or ``ANTHROPIC_BASE_URL``), ``openai`` (any OpenAI-compatible ``/v1/chat/completions``
server: OpenAI, vLLM, Ollama, llama.cpp; ``OPENAI_API_KEY`` optional), ``hf`` (a local HF model, greedy,
batched, left padding) and ``offline`` (deterministic, no LLM: :class:`nla.teach.offline.OfflineTeacher`):
:mod:`nla.teach.api`, :mod:`nla.teach.local`, :mod:`nla.teach.offline`.
API keys are read from the environment only; never logged, written, or put into exception messages.

>>> t = make_teacher("offline", TeacherOptions(model="smollm2-135m"))  # doctest: +SKIP
>>> parse_answer(t.answer(["The capital of France is"])[0])            # doctest: +SKIP
('Setting: prose ...', None)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from nla.core.text import CLOSE, OPEN, extract_explanation

INSTRUCTION_VERSION = "teach-v1"
INSTRUCTION = """You will read an excerpt of text that stops right after a particular token (the final token). \
Imagine a language model that has read exactly this excerpt and must predict what comes next.

Write 2 or 3 short features (about 80-100 words in total) that such a model would use to make that \
prediction: for example the topic, genre or setting, who is speaking, and recent phrases it must keep \
track of. The LAST feature must describe the final token itself: what it is, its role at this point, \
and what it constrains about the next token.

Write one feature per line, without numbering, inside <explanation> and </explanation>, and write \
nothing after </explanation>.

<excerpt>{context}</excerpt>"""


def build_prompt(context: str) -> str:
    """The teacher instruction around one context (the excerpt ends exactly at the final token)."""
    return INSTRUCTION.format(context=context)


@runtime_checkable
class Teacher(Protocol):
    """Turns contexts into raw answers; ``None`` means no answer for that context (counted as a drop)."""

    name: str  # registry name, e.g. "openai"
    model: str  # model id: part of the cache key and of the output sidecar
    version: str  # instruction/format version: part of the cache key
    max_batch: int  # contexts per answer() call
    parallel: bool  # True: teach() may call answer() from several threads at once (API teachers)

    def answer(self, contexts: list[str]) -> list[str | None]: ...


@dataclass
class TeacherOptions:
    """Everything a registered teacher factory may read (each uses the fields that concern it)."""

    model: str = ""  # "" = the teacher's default model
    base_url: str = ""  # API teachers; "" = environment variable or the public endpoint
    max_tokens: int = 400  # answer length cap (API max_tokens, hf max_new_tokens)
    temperature: float | None = None  # None = the server's / greedy default
    retries: int = 6  # API: retries on 429/5xx/connection errors
    backoff: float = 1.0  # API: first retry delay in seconds, doubled each time, with jitter
    timeout: float = 120.0  # API: seconds per request
    seed: int = 0  # API: seed of the retry jitter
    tail_tokens: int = 16  # offline: tokens of the context tail to quote
    top_k: int = 4  # offline: top next-token predictions of the target to list
    style: str = "full"  # offline: "full", "compact", "rich" or "open" (see OfflineTeacher)
    batch_size: int = 8  # hf/offline: sequences per generate/forward batch
    device: str = "cpu"  # hf/offline


# ----------------------------------------------------------------------------------- strict parsing

_MARKER = re.compile(
    r"^(?:[-*\u2022+]\s+|\(?\d{1,2}[.)]\s+|\(?\d{1,2}[.)]$"
    r"|(?:\*\*|__)?feature\s*\d+\s*(?:\*\*|__)?\s*[:.)\-\u2013]\s*(?:\*\*|__)?\s*)",
    re.IGNORECASE,
)


def strip_marker(line: str) -> str:
    """Remove list markers ("1.", "-", "*", "Feature 1:", "**Feature 2:**"), repeatedly, from one line."""
    s = line.strip()
    while True:
        new = _MARKER.sub("", s, count=1).strip()
        if new == s:
            return s
        s = new


def split_features(inner: str) -> list[str]:
    """Features of an explanation body: one per line; with list markers, unmarked lines continue the
    previous feature (wrapped text)."""
    lines = [ln.strip() for ln in inner.splitlines() if ln.strip()]
    marked = any(strip_marker(ln) != ln for ln in lines)
    feats: list[str] = []
    for ln in lines:
        body = strip_marker(ln)
        if marked and body == ln and feats:
            feats[-1] = f"{feats[-1]} {body}"
        elif body:
            feats.append(body)
    return feats


def parse_answer(answer: str | None, *, min_features: int = 2) -> tuple[str | None, str | None]:
    """``(explanation, None)`` for a usable answer, else ``(None, reason)``.

    Reasons: ``no_answer``, ``no_tag`` (no opening tag), ``no_closing_tag``, ``empty``,
    ``too_few_features``. The explanation is the features joined one per line.
    """
    if answer is None or not answer.strip():
        return None, "no_answer"
    start = answer.find(OPEN)
    if start < 0:
        return None, "no_tag"
    if answer.find(CLOSE, start) < 0:
        return None, "no_closing_tag"
    inner = extract_explanation(answer[start:])
    if inner is None:
        return None, "empty"
    feats = split_features(inner)
    if len(feats) < min_features:
        return None, "too_few_features"
    return "\n".join(feats), None
