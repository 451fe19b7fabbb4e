"""Teachers: who writes the warm-start explanations that AR-SFT and AV-SFT learn from.

A teacher reads the context of an activation (the text up to AND including its token) and answers
``<explanation>...</explanation>`` holding 2-3 short features a model would use to predict what comes
next; the last feature describes the final token (NLA.md §1). :func:`parse_answer` is strict: no closing
tag or fewer than 2 features means the row is dropped, with a reason that is counted.

**Stored explanation format**: the features, one per line (``"\\n".join(features)``), list markers
("1.", "-", "*", "Feature 1:") removed. ``response`` = the same text wrapped in explanation tags.

Registry (:func:`make_teacher`): ``anthropic`` (Messages API, ``ANTHROPIC_API_KEY``, base URL from
``--base-url`` or ``ANTHROPIC_BASE_URL``), ``openai`` (any OpenAI-compatible ``/v1/chat/completions``
server: OpenAI, vLLM, Ollama, llama.cpp; ``OPENAI_API_KEY`` optional), ``hf`` (a local HF model, greedy,
batched, left padding) and ``offline`` (deterministic, no LLM: :class:`nla.teachers_offline.OfflineTeacher`).
API keys are read from the environment only; never logged, written, or put into exception messages.

>>> t = make_teacher("offline", TeacherOptions(model="smollm2-135m"))  # doctest: +SKIP
>>> parse_answer(t.answer(["The capital of France is"])[0])            # doctest: +SKIP
('Setting: prose ...', None)
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from nla.errors import NLAError
from nla.text import CLOSE, OPEN, extract_explanation, readable

log = logging.getLogger(__name__)

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
    style: str = "full"  # offline: "full" or "compact" (see OfflineTeacher)
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


# ----------------------------------------------------------------------------------- HTTP teachers

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})


def public_url(url: str) -> str:
    """``url`` without user:password and query string (safe to log and to write into a sidecar)."""
    p = urllib.parse.urlsplit(url)
    host = p.hostname or ""
    netloc = f"{host}:{p.port}" if p.port else host
    return urllib.parse.urlunsplit((p.scheme, netloc, p.path, "", ""))


class JsonClient:
    """POST JSON with retries (exponential backoff, seeded jitter) on 429/5xx and connection errors.

    Other HTTP errors raise one :class:`NLAError` line. ``secret`` is redacted from anything the server
    sends back before it can reach a message.
    """

    def __init__(self, label: str, opts: TeacherOptions, secret: str | None, sleep: Callable[[float], None] = time.sleep):
        self.label, self.retries, self.backoff, self.timeout = label, opts.retries, opts.backoff, opts.timeout
        self._secret = secret
        self._rng = random.Random(opts.seed)
        self._sleep = sleep

    def _clean(self, text: str) -> str:
        text = " ".join(text.split())[:300]
        return text.replace(self._secret, "***") if self._secret else text

    def post(self, url: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        data = json.dumps(body).encode("utf-8")
        where = public_url(url)
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(url, data=data, method="POST", headers={"content-type": "application/json", **headers})
            wait_hint = 0.0
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                try:
                    return json.loads(raw)
                except ValueError:
                    raise NLAError(f"{self.label} server at {where} did not return JSON") from None
            except urllib.error.HTTPError as e:
                detail = self._clean(e.read().decode("utf-8", "replace")) if e.fp is not None else ""
                if e.code not in RETRY_STATUS:
                    hint = " (check the API key in the environment)" if e.code in (401, 403) else ""
                    raise NLAError(f"{self.label} request to {where} failed: HTTP {e.code}{hint}: {detail}") from None
                problem = f"HTTP {e.code}"
                try:
                    wait_hint = min(float(e.headers.get("retry-after") or 0.0), 60.0)
                except ValueError:
                    wait_hint = 0.0
            except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as e:
                problem = self._clean(str(getattr(e, "reason", e)) or type(e).__name__)
            if attempt == self.retries:
                raise NLAError(f"{self.label} request to {where} failed after {attempt + 1} attempts: {problem}")
            delay = max(wait_hint, self.backoff * 2**attempt * (0.5 + self._rng.random()))
            log.warning("%s: %s, retrying in %.2f s (attempt %d/%d)", self.label, problem, delay, attempt + 2, self.retries + 1)
            self._sleep(delay)
        raise AssertionError("unreachable")


class _ApiTeacher:
    """One HTTP request per context; teach() runs several in threads (``parallel``)."""

    version, max_batch, parallel = INSTRUCTION_VERSION, 1, True

    def __init__(self, opts: TeacherOptions, key: str | None, base_url: str, sleep: Callable[[float], None]) -> None:
        self._key, self.base_url, self.opts = key, base_url, opts
        self._http = JsonClient(self.name, opts, key, sleep)

    def _body(self, context: str) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.opts.max_tokens}
        body["messages"] = [{"role": "user", "content": build_prompt(context)}]
        if self.opts.temperature is not None:
            body["temperature"] = self.opts.temperature
        return body

    def answer(self, contexts: list[str]) -> list[str | None]:
        return [self._one(c) for c in contexts]

    def _one(self, context: str) -> str | None:
        raise NotImplementedError


class AnthropicTeacher(_ApiTeacher):
    """Claude through the Messages API (``POST {base}/v1/messages``)."""

    name, default_model = "anthropic", "claude-haiku-4-5"

    def __init__(self, opts: TeacherOptions, sleep: Callable[[float], None] = time.sleep) -> None:
        key = os.environ.get("ANTHROPIC_API_KEY", "").strip()
        if not key:
            raise NLAError("the anthropic teacher needs an API key in the ANTHROPIC_API_KEY environment variable")
        self.model = opts.model or self.default_model
        base = opts.base_url or os.environ.get("ANTHROPIC_BASE_URL") or "https://api.anthropic.com"
        super().__init__(opts, key, re.sub(r"/v1/?$", "", base.rstrip("/")), sleep)

    def _one(self, context: str) -> str | None:
        headers = {"x-api-key": self._key or "", "anthropic-version": "2023-06-01"}
        data = self._http.post(self.base_url + "/v1/messages", self._body(context), headers)
        blocks = data.get("content") if isinstance(data, dict) else None
        if not isinstance(blocks, list):
            raise NLAError("anthropic returned a response without a content list")
        text = "".join(str(b.get("text", "")) for b in blocks if isinstance(b, dict) and b.get("type") == "text")
        return text or None


class OpenAITeacher(_ApiTeacher):
    """Any OpenAI-compatible chat-completions server (``POST {base}/chat/completions``; base ends in /v1)."""

    name, default_model = "openai", "gpt-4o-mini"

    def __init__(self, opts: TeacherOptions, sleep: Callable[[float], None] = time.sleep) -> None:
        self.model = opts.model or self.default_model
        base = (opts.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        if urllib.parse.urlsplit(base).path in ("", "/"):
            base += "/v1"  # a bare host such as http://localhost:8000 means its /v1 API
        super().__init__(opts, os.environ.get("OPENAI_API_KEY", "").strip() or None, base, sleep)

    def _one(self, context: str) -> str | None:
        headers = {"authorization": f"Bearer {self._key}"} if self._key else {}
        data = self._http.post(self.base_url + "/chat/completions", self._body(context), headers)
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise NLAError("openai-compatible server returned a response without choices[0].message.content") from None
        return content if isinstance(content, str) and content else None


# ----------------------------------------------------------------------------------- local teachers


class _LocalTeacher:
    """A teacher that runs a local HF model (loaded on first use unless a Target is given)."""

    parallel = False

    def __init__(self, opts: TeacherOptions | None = None, target: Any = None) -> None:
        from nla.target import DEFAULT_TARGET

        self.opts, self._target = opts or TeacherOptions(), target
        self.model = target.name if target is not None else (self.opts.model or DEFAULT_TARGET)

    def _load(self) -> Any:
        if self._target is None:
            from nla.target import load_target

            self._target = load_target(self.model, device=self.opts.device)
        return self._target


class HFTeacher(_LocalTeacher):
    """A local HF chat model (default: the embedded SmolLM2-135M-Instruct), batched greedy generation."""

    name, version = "hf", INSTRUCTION_VERSION

    def __init__(self, opts: TeacherOptions | None = None, target: Any = None) -> None:
        super().__init__(opts, target)
        self.max_batch = max(1, self.opts.batch_size)

    def answer(self, contexts: list[str]) -> list[str | None]:
        import torch

        t = self._load()
        tok = t.tokenizer
        # special tokens inside a context would be read as real chat markup: show them as [name]
        prompts = [build_prompt(readable(c, special_strings(tok), escape_newlines=False)) for c in contexts]
        if t.chat_template:
            prompts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) for p in prompts]
        prompts = [p + OPEN for p in prompts]  # prefill the opening tag: small models then keep the format
        side, tok.padding_side = tok.padding_side, "left"
        try:
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=not t.chat_template).to(t.device)
        finally:
            tok.padding_side = side
        with torch.no_grad():
            out = t.model.generate(  # (B, T + new)
                **enc, max_new_tokens=self.opts.max_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                stop_strings=[CLOSE], tokenizer=tok,
            )  # fmt: skip
        new = out[:, enc["input_ids"].shape[1] :]  # (B, new)
        return [OPEN + tok.decode(row, skip_special_tokens=True) for row in new]


def special_ids(tok: Any) -> set[int]:
    """Ids of all special tokens (declared special or added as special)."""
    found = set(getattr(tok, "all_special_ids", []) or [])
    return found | {i for i, a in getattr(tok, "added_tokens_decoder", {}).items() if getattr(a, "special", False)}


def special_strings(tok: Any) -> list[str]:
    """All special-token strings of a tokenizer (longest first)."""
    found = set(getattr(tok, "all_special_tokens", []) or [])
    for added in getattr(tok, "added_tokens_decoder", {}).values():
        if getattr(added, "special", False):
            found.add(added.content)
    return sorted((s for s in found if s), key=len, reverse=True)


# ----------------------------------------------------------------------------------- registry


TEACHERS: dict[str, Callable[[TeacherOptions], Teacher]] = {
    "anthropic": AnthropicTeacher,
    "openai": OpenAITeacher,
    "hf": HFTeacher,
    "offline": lambda opts: _offline_teacher(opts),
}


def _offline_teacher(opts: TeacherOptions) -> Teacher:
    from nla.teachers_offline import OfflineTeacher  # its own module: it needs the target model

    return OfflineTeacher(opts)


def register_teacher(name: str, factory: Callable[[TeacherOptions], Teacher]) -> None:
    """Add a teacher under ``name`` (a plug-in point; later registrations replace earlier ones)."""
    TEACHERS[name] = factory


def make_teacher(name: str, opts: TeacherOptions | None = None) -> Teacher:
    if name not in TEACHERS:
        raise NLAError(f"unknown teacher {name!r}; known teachers: {', '.join(sorted(TEACHERS))}")
    return TEACHERS[name](opts or TeacherOptions())
