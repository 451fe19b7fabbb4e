"""The offline teacher: deterministic warm-start explanations with no LLM, from the context and the
target model itself (see :class:`OfflineTeacher` for exactly what it writes)."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import torch

from nla.common.errors import NLAError
from nla.core.text import readable, wrap_explanation
from nla.teach import features
from nla.teach.base import TeacherOptions
from nla.teach.local import LocalTeacher, special_ids, special_strings

log = logging.getLogger(__name__)

# v2: turn start inside a role name; v3: the rich style; v4: intents name no topic; v5: plain transcripts are chats
OFFLINE_VERSION = "offline-v5"
STYLES = ("full", "compact", "rich", "open")
OPEN_VERSION = "open-v1"  # the open style's topic rule (nla.teach.lexicon.field_of), part of its cache key
_STOP = frozenset(
    """about above after again against also among another because been before being below between both
    could does doing down during each even every from further have having here hers herself himself into
    itself just like made make many more most much must myself never only other ours over same shall
    should since some such than that their theirs them then there these they this those through under
    until upon very want well were what when where which while whom whose will with within without would
    your yours yourself user assistant system model""".split()
)
_TURN = re.compile(
    r"<\|im_start\|>\s*(\w+)|<\|start_header_id\|>\s*(\w+)|<start_of_turn>\s*(\w+)|" + features.PLAIN_ROLE
)
_TURN_END = re.compile(r"<\|im_end\|>|<\|eot_id\|>|<end_of_turn>")
_CODE = re.compile(r"^\s*(?:def|class|import|return|function|const|let|var|public|#include)\b|[;{}]\s*$", re.M)
_WORD = re.compile(r"[A-Za-z][A-Za-z-]{3,}")
_PUNCT = {".": "a period", ",": "a comma", ":": "a colon", ";": "a semicolon", "?": "a question mark",
          "!": "an exclamation mark", '"': "a quotation mark", "'": "an apostrophe", "(": "an opening parenthesis",
          ")": "a closing parenthesis", "-": "a hyphen or dash", "*": "an asterisk", "/": "a slash"}  # fmt: skip
# classes of a next token, with the phrase that completes "so the next token most likely ..."
_NEXT = ("starts a new word", "continues the current word", "is a number or digit", "is punctuation",
         "is a line break", "is whitespace", "is a special token")  # fmt: skip
# the same classes as what comes next, for the rich style's "next comes ..."
_COMES = ("a new word", "the rest of the word", "a number", "punctuation", "a line break", "whitespace",
          "a special token")  # fmt: skip


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


def _salience(plain: str, k: int = 5) -> dict[str, float]:
    """The ``k`` most salient content words with their score: frequency plus a bonus for appearing late."""
    words = [w.lower().strip("-") for w in _WORD.findall(plain)]
    score: dict[str, float] = {}
    for i, w in enumerate(words):
        if len(w) >= 4 and w not in _STOP:
            score[w] = score.get(w, 0.0) + 1.0 + 2.0 * i / max(1, len(words))
    return {w: score[w] for w in sorted(score, key=lambda w: (-score[w], w))[:k]}


def _salient(plain: str, k: int = 5) -> list[str]:
    """Content words ranked by frequency plus a bonus for appearing late in the context."""
    return list(_salience(plain, k))


class OfflineTeacher(LocalTeacher):
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

    Example (SmolLM2, context
    ``<|im_start|>user\nHow do I boil pasta?<|im_end|>\n<|im_start|>assistant\nBring a large pot``)::

        Setting: a chat transcript (2 turns so far), inside the assistant's turn, about 11 words in;
          salient words: large, bring, pasta, boil.
        The text ends with: "...How do I boil pasta?[im_end]\n[im_start]assistant\nBring a large pot"
        The final token is " pot", the start of a word. The model predicts next " of" 94%, " to" 5%,
          " with" <1%, " filled" <1%, so the next token most likely starts a new word (100%).

    ``style="compact"`` (about 65 tokens with the tags) puts first what a layer-20 activation states most
    reliably and writes little else: the final token and its kind with the top ``top_k`` predictions, the
    ``tail_tokens`` tokens before it, and the setting in a few words. On SmolLM2 the final token alone
    predicts the L20 activation with FVE 0.40 (the mean training vector of each token, held out), the last
    two tokens 0.45 (``bench/token_ceiling.py``), so a correct first line is worth most of the score::

        Final token: " pot", the start of a word. Next: " of" 94%, " to" 5%, " with" <1%.
        Before it: "...[im_start]assistant\nBring a large"
        Setting: chat, inside the assistant's turn.

    ``style="rich"`` (about 91 tokens) keeps the compact style's final-token line and quote and adds what the
    context is about (:mod:`nla.teach.features`, deterministic, no model): the topic from a project-written
    taxonomy (``nla/resources/topics.yaml``; "unclear" when no topic's cue words stand out), up to 3
    salient words and the language (natural, or the programming language of code), all read from the
    visible text (a chat's system turn and markup removed); the setting with, in a chat, who is writing
    and what the user asked for; and the most likely kind of the next token::

        Final token: " pot", the start of a word. Next: " of" 94%, " to" 5%, " with" <1%.
        Topic: food and cooking; words: large, bring, pasta. Language: English.
        Setting: chat, the assistant answers a request for how-to instructions. Next comes a new word (100%).
        Before it: "...assistant\nBring a large"

    With ``tail_tokens=0`` the compact and rich styles quote nothing (no ``Before it:`` line). An AV cannot
    read the exact words before the final token off a layer-20 vector: the round-4 AV's 6-token quote matched
    even the last 2 characters of the real text in 2% of its answers (docs/results.md §15), so every such
    line it wrote was an invented quotation.

    Contexts that share a prefix (rows of one document) share one forward pass: the longest context is
    run once and logits are read at each row's last token, after checking that the shorter context's
    tokens are a prefix of the longer one's (otherwise that row gets its own forward).
    """

    name = "offline"

    def __init__(self, opts: TeacherOptions | None = None, target: Any = None) -> None:
        super().__init__(opts, target)
        if self.opts.style not in STYLES:
            raise NLAError(f"unknown offline teacher style {self.opts.style!r}; choose one of {', '.join(STYLES)}")
        self.style = self.opts.style
        # compact, rich and open may quote nothing (tail 0: no "Before it:" line); the full style always quotes
        self.tail = max(0 if self.style != "full" else 1, self.opts.tail_tokens)
        self.top_k = max(1, self.opts.top_k)
        self.version = f"{OFFLINE_VERSION}-t{self.tail}-k{self.top_k}" + (
            "" if self.style == "full" else f"-{self.style}"
        )
        self._wordnet: Any = None
        if self.style == "open":  # fails now, with the install hint, rather than after the first forward pass
            from nla.teach.lexicon import load_wordnet

            self._wordnet = load_wordnet()
            self.version += f"-{OPEN_VERSION}-wn{self._wordnet.fingerprint}"
        self.lexicon_seconds = 0.0  # time spent naming fields (for the cost benchmark)
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
        return [
            self._write(tok, contexts[i], ids[i], probs[i], specials) if i in probs else None
            for i in range(len(contexts))
        ]

    def _forward(self, t: Any, roots: list[int], ids: list[list[int]], members: dict[int, list[int]]) -> dict[int, Any]:
        """One padded forward of ``roots``; returns each member's next-token distribution, shape (V,)."""

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

        if self._classes is None or self._classes.shape[0] != V:
            n = min(V, len(tok))
            specials = special_ids(tok)
            strs = tok.batch_decode([[i] for i in range(n)], clean_up_tokenization_spaces=False)
            cls = [_token_class(s, i in specials) for i, s in enumerate(strs)] + [6] * (V - n)
            self._classes = torch.tensor(cls, dtype=torch.long)
        return self._classes

    def _write(self, tok: Any, context: str, ids: list[int], p: Any, specials: list[str]) -> str:
        """The three features for one context; ``p`` is the next-token distribution, shape (V,)."""

        plain = re.sub("|".join(map(re.escape, specials)), " ", context) if specials else context
        turns = list(_TURN.finditer(context))
        where = ""
        if turns:
            role = next(g for g in turns[-1].groups() if g).lower()
            if turns[-1].end() == len(context.rstrip(" ")):  # the role name itself is still being written
                where = "at the start of a new turn"
            elif _TURN_END.search(context, turns[-1].end()):
                where = f"just after the end of the {role}'s turn"
            else:
                where = f"inside the {role}'s turn"
        code = not turns and len(_CODE.findall(plain)) >= 2

        decode = lambda x: tok.decode(x, clean_up_tokenization_spaces=False)  # noqa: E731
        pieces = [decode([x]) for x in ids[-8:]]
        sids = special_ids(tok)
        is_special = [x in sids for x in ids[-8:]]
        kind = self._kind(pieces, is_special)
        show = lambda s: '"' + readable(s, specials).replace('"', "'") + '"'  # noqa: E731
        top = torch.topk(p, min(self.top_k, p.shape[0]))
        preds = ", ".join(
            f"{show(decode([int(i)]))} {_pct(float(v))}" for v, i in zip(top.values, top.indices, strict=True)
        )

        if self.style in ("compact", "rich", "open"):
            before = ids[:-1][-self.tail :]
            quote = readable(decode(before), specials).replace('"', "'") if before else ""
            setting = f"chat, {where}" if turns else ("source code" if code else "prose")
            first = f"Final token: {show(pieces[-1])}, {kind}. Next: {preds}."
            before_it = f'Before it: "{"..." if len(ids) - 1 > self.tail else ""}{quote}"'
            if self.style == "compact":
                lines = [first, before_it, f"Setting: {setting}."]
                return wrap_explanation("\n".join(lines[::2] if self.tail == 0 else lines))
            mass = torch.zeros(len(_NEXT)).index_add_(0, self._vocab_classes(tok, p.shape[0]), p)  # (C,)
            if is_special[-1] or not pieces[-1][-1:].isalnum():
                mass[0], mass[1] = mass[0] + mass[1], 0.0  # here a token without a leading space starts a word
            c = int(mass.argmax())
            if turns and where.startswith("inside"):
                setting = f"chat, {features.chat_situation(context) or where}"
            setting += f". Next comes {_COMES[c]} ({_pct(float(mass[c]))})"
            about = self._about(context, code) if self.style == "rich" else self._open_about(context, code)
            lines = [first, about, f"Setting: {setting}.", before_it]
            return wrap_explanation("\n".join(lines[:3] if self.tail == 0 else lines))

        if turns:
            head = f"Setting: a chat transcript ({len(turns)} turn{'s' if len(turns) > 1 else ''} so far), {where}"
        else:
            head = "Setting: source code" if code else "Setting: prose"
        words = _salient(plain)
        setting = f"{head}, about {len(plain.split())} words in" + (
            f"; salient words: {', '.join(words)}." if words else "."
        )
        tail = readable(decode(ids[-self.tail :]), specials)
        quote = f'The text ends with: "{"..." if len(ids) > self.tail else ""}{tail}"'
        classes = self._vocab_classes(tok, p.shape[0])
        mass = torch.zeros(len(_NEXT)).index_add_(0, classes, p)  # (C,)
        c = int(mass.argmax())
        final = (
            f"The final token is {show(pieces[-1])}, {kind}. The model predicts next {preds}, "
            f"so the next token most likely {_NEXT[c]} ({_pct(float(mass[c]))})."
        )
        return wrap_explanation("\n".join([setting, quote, final]))

    @staticmethod
    def _about(context: str, code: bool) -> str:
        """The rich style's topic line: topic (or "unclear"), up to 3 salient words, the language."""
        text = features.visible_text(context)
        topic = features.topic_of(text)
        label = topic.label or "unclear"
        words = _salient(text, k=3)
        lang, in_block = features.code_language(context)
        if lang and (code or in_block):
            language = f"{lang} code"
        else:
            language = features.natural_language(text)
        return f"Topic: {label}" + (f"; words: {', '.join(words)}" if words else "") + f". Language: {language}."

    def _open_about(self, context: str, code: bool) -> str:
        """The open style's topic line: a field named from WordNet (:func:`nla.teach.lexicon.field_of`, in words
        no list of the project holds) or "unclear", then up to 3 words of the text, the most topical nouns first
        (:func:`nla.teach.lexicon.topical_words`; in a language other than English the most salient words and
        no field), the language."""
        from nla.teach.lexicon import field_of, topical_words

        started = time.perf_counter()
        text = features.visible_text(context)[-1500:]
        salience = _salience(text, k=12)
        lang, in_block = features.code_language(context)
        language = f"{lang} code" if lang and (code or in_block) else features.natural_language(text)
        label, top = "", list(salience)
        if features.natural_language(text) == "English":
            topical = topical_words(self._wordnet, salience)
            label = field_of(self._wordnet, {w: salience[w] for w in topical}).label
            top = list(topical) or top
        self.lexicon_seconds += time.perf_counter() - started
        words = f"; words: {', '.join(top[:3])}" if top else ""
        return f"Topic: {label or 'unclear'}{words}. Language: {language}."

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
            return "a word start right after " + (
                "a special token" if len(pieces) > 1 and special[-2] else "punctuation or a line break"
            )
        return _PUNCT.get(s.strip(), "punctuation")
