"""API teachers: Claude through the Messages API and any OpenAI-compatible chat-completions server.

API keys are read from the environment only (``ANTHROPIC_API_KEY``, ``OPENAI_API_KEY``); they are never
logged, written, or put into exception messages (:class:`JsonClient` redacts them from server replies).
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
from typing import Any

from nla.common.errors import NLAError
from nla.teach.base import INSTRUCTION_VERSION, TeacherOptions, build_prompt

log = logging.getLogger(__name__)

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

    def __init__(
        self, label: str, opts: TeacherOptions, secret: str | None, sleep: Callable[[float], None] = time.sleep
    ):
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
            req = urllib.request.Request(
                url, data=data, method="POST", headers={"content-type": "application/json", **headers}
            )
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
            log.warning(
                "%s: %s, retrying in %.2f s (attempt %d/%d)", self.label, problem, delay, attempt + 2, self.retries + 1
            )
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
