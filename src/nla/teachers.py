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
batched, left padding) and ``offline`` (deterministic, no LLM: :class:`OfflineTeacher`).
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
from nla.text import CLOSE, OPEN, extract_explanation

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


def readable(text: str, specials: list[str], *, escape_newlines: bool = True) -> str:
    """Special tokens as ``[name]`` (``<|im_end|>`` -> ``[im_end]``), newlines/tabs as ``\\n``/``\\t``."""
    if specials:
        pattern = "|".join(re.escape(s) for s in specials)
        text = re.sub(pattern, lambda m: "[" + m.group(0).strip("<|>") + "]", text)
    if escape_newlines:
        text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
    return text


# ----------------------------------------------------------------------------------- offline teacher

OFFLINE_VERSION = "offline-v1"
_STOP = frozenset(
    """about above after again against also among another because been before being below between both
    could does doing down during each even every from further have having here hers herself himself into
    itself just like made make many more most much must myself never only other ours over same shall
    should since some such than that their theirs them then there these they this those through under
    until upon very want well were what when where which while whom whose will with within without would
    your yours yourself user assistant system model""".split()
)
_TURN = re.compile(r"<\|im_start\|>\s*(\w+)|<\|start_header_id\|>\s*(\w+)|<start_of_turn>\s*(\w+)")
_TURN_END = re.compile(r"<\|im_end\|>|<\|eot_id\|>|<end_of_turn>")
_CODE = re.compile(r"^\s*(?:def|class|import|return|function|const|let|var|public|#include)\b|[;{}]\s*$", re.M)
_WORD = re.compile(r"[A-Za-z][A-Za-z-]{3,}")
_PUNCT = {".": "a period", ",": "a comma", ":": "a colon", ";": "a semicolon", "?": "a question mark",
          "!": "an exclamation mark", '"': "a quotation mark", "'": "an apostrophe", "(": "an opening parenthesis",
          ")": "a closing parenthesis", "-": "a hyphen or dash", "*": "an asterisk", "/": "a slash"}  # fmt: skip
# classes of a next token, with the phrase that completes "so the next token most likely ..."
_NEXT = ("starts a new word", "continues the current word", "is a number or digit", "is punctuation",
         "is a line break", "is whitespace", "is a special token")  # fmt: skip


def _token_class(s: str, special: bool) -> int:
    """Index into ``_NEXT`` for one decoded vocabulary token."""
    if special:
        return 6
    if not s.strip():
        return 4 if "\n" in s else 5
    first = s.lstrip()[0]
    if first.isdigit():
        return 2
    if first.isalpha() or first == "_":
        return 0 if s[0].isspace() else 1
    return 3


def _pct(p: float) -> str:
    return f"{round(100 * p)}%" if p >= 0.005 else "<1%"


def _salient(plain: str, k: int = 5) -> list[str]:
    """Content words ranked by frequency plus a bonus for appearing late in the context."""
    words = [w.lower().strip("-") for w in _WORD.findall(plain)]
    score: dict[str, float] = {}
    for i, w in enumerate(words):
        if len(w) >= 4 and w not in _STOP:
            score[w] = score.get(w, 0.0) + 1.0 + 2.0 * i / max(1, len(words))
    return sorted(score, key=lambda w: (-score[w], w))[:k]


class OfflineTeacher(_LocalTeacher):
    r"""A deterministic teacher built from the context and the target model itself (no LLM call).

    For each context (tokenised without adding special tokens) it writes three features, one per line:

    1. **Setting**: chat transcript (number of turns, whose turn the text ends in) / source code / prose,
       the approximate number of words so far, and up to 5 salient content words (frequency + recency).
    2. **Tail quote**: the last ``tail_tokens`` tokens verbatim, special tokens shown as ``[im_end]``,
       newlines as ``\n``. (Re-running SmolLM2 on its last 16 tokens reproduces the L20 activation with
       FVE 0.79, so the quote carries most of the reconstruction signal.)
    3. **Final token**: the token itself, its kind (word start / continuation of a word / number /
       punctuation / line break / special token and its chat role), the target's top ``top_k``
       next-token predictions with probabilities from a full forward pass, and the most likely kind of
       the next token (probability mass over the vocabulary by kind).

    Example (SmolLM2, context ``<|im_start|>user\nHow do I boil pasta?<|im_end|>\n<|im_start|>assistant\nBring a large pot``)::

        Setting: a chat transcript (2 turns so far), inside the assistant's turn, about 11 words in; salient words: large, bring, pasta, boil.
        The text ends with: "...How do I boil pasta?[im_end]\n[im_start]assistant\nBring a large pot"
        The final token is " pot", the start of a word. The model predicts next " of" 94%, " to" 5%, " with" <1%, " filled" <1%, so the next token most likely starts a new word (100%).

    Contexts that share a prefix (rows of one document) share one forward pass: the longest context is
    run once and logits are read at each row's last token, after checking that the shorter context's
    tokens are a prefix of the longer one's (otherwise that row gets its own forward).
    """

    name = "offline"

    def __init__(self, opts: TeacherOptions | None = None, target: Any = None) -> None:
        super().__init__(opts, target)
        self.tail, self.top_k = max(1, self.opts.tail_tokens), max(1, self.opts.top_k)
        self.version = f"{OFFLINE_VERSION}-t{self.tail}-k{self.top_k}"
        self.max_batch = 512  # contexts per call: rows of one document in one call share a forward
        self.batch_tokens = 4096  # padded tokens per forward batch
        self.n_sequences = 0  # sequences forwarded so far (for tests and benchmarks)
        self._classes: Any = None

    def answer(self, contexts: list[str]) -> list[str | None]:
        t = self._load()
        tok = t.tokenizer
        specials = special_strings(tok)
        ids: list[list[int]] = [list(x) for x in tok(contexts, add_special_tokens=False)["input_ids"]]
        roots: list[int] = []
        members: dict[int, list[int]] = {}
        for i in sorted(range(len(contexts)), key=lambda i: (-len(ids[i]), i)):
            n = len(ids[i])
            if n == 0:
                continue
            host = next((r for r in roots if contexts[r].startswith(contexts[i]) and ids[r][:n] == ids[i]), None)
            if host is None:
                roots.append(i)
                members[i] = [i]
            else:
                members[host].append(i)
        probs: dict[int, Any] = {}
        batch: list[int] = []
        for r in sorted(roots, key=lambda r: (len(ids[r]), r)):  # ascending: len(ids[r]) is the padded length
            padded, real = (len(batch) + 1) * len(ids[r]), sum(len(ids[b]) for b in batch) + len(ids[r])
            if batch and (len(batch) >= self.opts.batch_size or padded > self.batch_tokens or padded > 1.25 * real):
                probs.update(self._forward(t, batch, ids, members))
                batch = []
            batch.append(r)
        if batch:
            probs.update(self._forward(t, batch, ids, members))
        return [self._write(tok, contexts[i], ids[i], probs[i], specials) if i in probs else None for i in range(len(contexts))]

    def _forward(self, t: Any, roots: list[int], ids: list[list[int]], members: dict[int, list[int]]) -> dict[int, Any]:
        """One padded forward of ``roots``; returns each member's next-token distribution, shape (V,)."""
        import torch

        B, T, P = len(roots), max(len(ids[r]) for r in roots), max(len(members[r]) for r in roots)
        input_ids = torch.full((B, T), int(t.tokenizer.pad_token_id or 0), dtype=torch.long)  # (B, T)
        mask = torch.zeros(B, T, dtype=torch.long)  # (B, T)
        pos = torch.zeros(B, P, dtype=torch.long)  # (B, P): positions whose logits are needed
        for b, r in enumerate(roots):
            input_ids[b, : len(ids[r])] = torch.tensor(ids[r])
            mask[b, : len(ids[r])] = 1
            ps = [len(ids[m]) - 1 for m in members[r]]
            pos[b] = torch.tensor(ps + [ps[-1]] * (P - len(ps)))
        input_ids, mask, pos = input_ids.to(t.device), mask.to(t.device), pos.to(t.device)
        with torch.no_grad():
            try:
                logits = t.model(input_ids=input_ids, attention_mask=mask, logits_to_keep=pos, use_cache=False).logits
            except (TypeError, ValueError, IndexError):
                logits = None
            if logits is None or logits.shape[:2] != (B, P):  # models without 2-D logits_to_keep
                full = t.model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits  # (B, T, V)
                logits = torch.gather(full, 1, pos[..., None].expand(B, P, full.shape[-1]))  # (B, P, V)
        probs = torch.softmax(logits.float(), dim=-1).cpu()  # (B, P, V)
        self.n_sequences += B
        return {m: probs[b, j] for b, r in enumerate(roots) for j, m in enumerate(members[r])}

    def _vocab_classes(self, tok: Any, V: int) -> Any:  # -> (V,) long
        import torch

        if self._classes is None or self._classes.shape[0] != V:
            n = min(V, len(tok))
            specials = special_ids(tok)
            strs = tok.batch_decode([[i] for i in range(n)], clean_up_tokenization_spaces=False)
            cls = [_token_class(s, i in specials) for i, s in enumerate(strs)] + [6] * (V - n)
            self._classes = torch.tensor(cls, dtype=torch.long)
        return self._classes

    def _write(self, tok: Any, context: str, ids: list[int], p: Any, specials: list[str]) -> str:
        """The three features for one context; ``p`` is the next-token distribution, shape (V,)."""
        import torch

        from nla.text import wrap_explanation

        plain = re.sub("|".join(map(re.escape, specials)), " ", context) if specials else context
        turns = list(_TURN.finditer(context))
        if turns:
            role = next(g for g in turns[-1].groups() if g)
            where = f"just after the end of the {role}'s turn" if _TURN_END.search(context, turns[-1].end()) else f"inside the {role}'s turn"
            head = f"Setting: a chat transcript ({len(turns)} turn{'s' if len(turns) > 1 else ''} so far), {where}"
        elif len(_CODE.findall(plain)) >= 2:
            head = "Setting: source code"
        else:
            head = "Setting: prose"
        words = _salient(plain)
        setting = f"{head}, about {len(plain.split())} words in" + (f"; salient words: {', '.join(words)}." if words else ".")

        decode = lambda x: tok.decode(x, clean_up_tokenization_spaces=False)  # noqa: E731
        tail = readable(decode(ids[-self.tail :]), specials)
        quote = f'The text ends with: "{"..." if len(ids) > self.tail else ""}{tail}"'

        pieces = [decode([x]) for x in ids[-8:]]
        sids = special_ids(tok)
        is_special = [x in sids for x in ids[-8:]]
        kind = self._kind(pieces, is_special)
        show = lambda s: '"' + readable(s, specials).replace('"', "'") + '"'  # noqa: E731
        top = torch.topk(p, min(self.top_k, p.shape[0]))
        preds = ", ".join(f"{show(decode([int(i)]))} {_pct(float(v))}" for v, i in zip(top.values, top.indices, strict=True))
        classes = self._vocab_classes(tok, p.shape[0])
        mass = torch.zeros(len(_NEXT)).index_add_(0, classes, p)  # (C,)
        c = int(mass.argmax())
        final = (
            f"The final token is {show(pieces[-1])}, {kind}. The model predicts next {preds}, "
            f"so the next token most likely {_NEXT[c]} ({_pct(float(mass[c]))})."
        )
        return wrap_explanation("\n".join([setting, quote, final]))

    @staticmethod
    def _kind(pieces: list[str], special: list[bool]) -> str:
        """What the last of ``pieces`` (decoded tokens of the tail) is, in words."""
        s = pieces[-1]
        if special[-1]:
            low = s.lower()
            if any(k in low for k in ("endoftext", "begin_of_text", "<s>", "</s>", "bos", "eos")):
                return "a special token marking a document boundary"
            if "start" in low or "header" in low:
                return "a special token that opens a chat turn, so a role name such as user or assistant comes next"
            if "end" in low or "eot" in low:
                return "a special token that closes a chat turn"
            return "a special control token"
        if not s.strip():
            if s.count("\n") >= 2:
                return "a paragraph break (blank line)"
            return "a line break, so a new line starts next" if "\n" in s else "whitespace (indentation)"
        word, j = s, len(pieces) - 1
        while j > 0 and not special[j - 1] and pieces[j][:1].isalnum() and pieces[j - 1][-1:].isalnum():
            word, j = pieces[j - 1] + word, j - 1
        word = word.strip()
        first = s.lstrip()[0]
        if first.isdigit():
            return f'a digit continuing the number "{word}"' if word != s.strip() else "a number"
        if first.isalpha() or first == "_":
            if s[0].isspace():
                return "the start of a word"
            if word != s.strip():
                return f'a piece continuing the word "{word}"'
            return "a word start right after " + ("a special token" if len(pieces) > 1 and special[-2] else "punctuation or a line break")
        return _PUNCT.get(s.strip(), "punctuation")


# ----------------------------------------------------------------------------------- registry


TEACHERS: dict[str, Callable[[TeacherOptions], Teacher]] = {
    "anthropic": AnthropicTeacher,
    "openai": OpenAITeacher,
    "hf": HFTeacher,
    "offline": OfflineTeacher,
}


def register_teacher(name: str, factory: Callable[[TeacherOptions], Teacher]) -> None:
    """Add a teacher under ``name`` (a plug-in point; later registrations replace earlier ones)."""
    TEACHERS[name] = factory


def make_teacher(name: str, opts: TeacherOptions | None = None) -> Teacher:
    if name not in TEACHERS:
        raise NLAError(f"unknown teacher {name!r}; known teachers: {', '.join(sorted(TEACHERS))}")
    return TEACHERS[name](opts or TeacherOptions())
